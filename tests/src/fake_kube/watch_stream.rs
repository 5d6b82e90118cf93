//! Watch responses of the fake API server: a held-open chunked body with one
//! JSON event per line, starting after the requested resourceVersion (or
//! with the current objects as ADDED), BOOKMARKs when asked, an ERROR 410
//! for a compacted version, and an end when the test drops watches.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::Shared;
use super::http::{Body, Target, empty, served, status, status_body};
use super::store::{Selector, Since, selected};

pub(super) fn watch(
    shared: Arc<Shared>,
    target: Target,
    query: &HashMap<String, String>,
    labels: Selector,
    fields: Selector,
) -> Response<Body> {
    let start = match query.get("resourceVersion").map(String::as_str) {
        None | Some("" | "0") => None,
        Some(v) => match v.parse::<u64>() {
            Ok(v) => Some(v),
            Err(_) => {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "invalid resourceVersion",
                );
            }
        },
    };
    let bookmarks = query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let watch = Watch {
            shared,
            target,
            labels,
            fields,
            tx,
        };
        watch.run(start, bookmarks, timeout).await;
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let line = rx.recv().await?;
        Some((Ok::<_, Infallible>(Frame::data(line)), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap_or_else(|_| Response::new(empty()))
}

/// One open watch response.
struct Watch {
    shared: Arc<Shared>,
    target: Target,
    labels: Selector,
    fields: Selector,
    tx: mpsc::Sender<Bytes>,
}

impl Watch {
    async fn run(self, start: Option<u64>, bookmarks: bool, timeout: Duration) {
        let mut changed = self.shared.changed.subscribe();
        let mut generation = self.shared.generation.subscribe();
        generation.borrow_and_update();
        let mut cursor = match start {
            Some(version) => {
                let since = self.shared.store.lock().since(version);
                match since {
                    Since::Version(v) => v,
                    Since::Gone => {
                        let message = format!("too old resource version: {version}");
                        let error = status_body(410, "Expired", &message);
                        let _ = self.send_line("ERROR", &error).await;
                        return;
                    }
                }
            }
            // No version: the current state as ADDED events, then changes.
            None => {
                let (objects, now) = {
                    let store = self.shared.store.lock();
                    let objects = store.list(self.target.kind, self.target.namespace.as_deref());
                    (objects, store.resource_version())
                };
                for object in objects {
                    if self.wanted(&object)
                        && !self
                            .send_line("ADDED", &served(&object, &self.target))
                            .await
                    {
                        return;
                    }
                }
                now
            }
        };
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(self.shared.bookmark_interval);
        tick.tick().await;
        loop {
            let (changes, now) = {
                let store = self.shared.store.lock();
                (
                    store.changes_after(self.target.kind, cursor),
                    store.resource_version(),
                )
            };
            for change in changes {
                if self.wanted(&change.object)
                    && !self
                        .send_line(change.event.as_str(), &served(&change.object, &self.target))
                        .await
                {
                    return;
                }
            }
            cursor = now;
            tokio::select! {
                _ = changed.changed() => {}
                _ = generation.changed() => return,
                _ = &mut deadline => return,
                _ = self.tx.closed() => return,
                _ = tick.tick() => {
                    if bookmarks {
                        let bookmark = json!({
                            "apiVersion": self.target.kind.api_version(&self.target.version),
                            "kind": self.target.kind.kind,
                            "metadata": { "resourceVersion": cursor.to_string() },
                        });
                        if !self.send_line("BOOKMARK", &bookmark).await {
                            return;
                        }
                    }
                }
            }
        }
    }

    fn wanted(&self, object: &Value) -> bool {
        let in_namespace = self
            .target
            .namespace
            .as_deref()
            .is_none_or(|ns| object["metadata"]["namespace"].as_str() == Some(ns));
        in_namespace && selected(object, &self.labels, &self.fields)
    }

    /// False once the client has gone.
    async fn send_line(&self, event: &str, object: &Value) -> bool {
        let mut line =
            serde_json::to_vec(&json!({ "type": event, "object": object })).unwrap_or_default();
        line.push(b'\n');
        {
            let mut counts = self.shared.counts.lock();
            let traffic = counts.traffic.entry(self.target.kind.plural).or_default();
            traffic.watch_bytes += line.len() as u64;
            match event {
                "BOOKMARK" => traffic.bookmarks += 1,
                "ERROR" => {}
                _ => traffic.watch_events += 1,
            }
        }
        self.tx.send(Bytes::from(line)).await.is_ok()
    }
}
