//! Input files the CA follows while it runs: the bootstrap tokens, and the
//! serving certificate and key when they come from files. A node added to the
//! tokens file, or a renewed serving certificate, must apply without a restart.
//!
//! The pattern is the agent's for its trust bundle: inotify on the directory
//! of each file (editors, `mv` and Kubernetes volume updates all replace files,
//! so a watch on the file itself would see nothing after the first update)
//! with a slow poll beside it, or the poll alone where inotify is unavailable.
//! Each wake-up reads the files and compares their bytes with what is in
//! force and with the last rejected content, so only a real change is parsed.
//! A change that parses is applied; one that does not is logged with the path
//! and the reason, and the last good value stays in force: a typo in the tokens
//! file must not lock every node out.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::RecommendedWatcher;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::file_events;

/// How a followed file set is going.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FollowStatus {
    /// Changes applied since start (the content read at start is generation 0).
    pub generation: u64,
    /// Changes or failed reads rejected since start.
    pub rejected: u64,
    /// Why the files' current content is not in force, while it is not.
    pub last_error: Option<String>,
}

/// What happened on a wake-up that found new content; for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Rejected,
}

/// Called with each outcome (a metrics counter, say).
pub type OutcomeHook = Arc<dyn Fn(Outcome) + Send + Sync>;

/// Why the files could not be used at start.
#[derive(Debug, thiserror::Error)]
pub enum FollowError<E: std::error::Error + 'static> {
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Invalid(E),
}

/// The files to follow and how.
#[derive(Clone, Debug)]
pub struct FileSet {
    /// What the files are, for log lines (`tokens`, `serving certificate`).
    pub what: &'static str,
    pub paths: Vec<PathBuf>,
    /// Re-read period: beside inotify a backstop, alone the only trigger.
    pub poll: Duration,
    /// Quiet time after an event, so the writes of one update are read once.
    pub settle: Duration,
    pub inotify: bool,
}

impl FileSet {
    pub fn new(what: &'static str, paths: Vec<PathBuf>) -> Self {
        Self {
            what,
            paths,
            poll: Duration::from_secs(5),
            settle: Duration::from_millis(100),
            inotify: true,
        }
    }

    pub fn with_poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// Reads and parses the files (failing if they are unusable, since there is
    /// no last good value yet), then follows them until the result is dropped.
    /// `parse` gets the contents in the order of `paths`.
    pub async fn start<T, E, P>(
        self,
        parse: P,
        hook: Option<OutcomeHook>,
    ) -> Result<Followed<T>, FollowError<E>>
    where
        T: Send + Sync + 'static,
        E: std::error::Error + Display + Send + 'static,
        P: Fn(&[Vec<u8>]) -> Result<T, E> + Send + Sync + 'static,
    {
        // Watch before the first read, so an update racing it is not missed.
        let wake = Arc::new(Notify::new());
        let watcher = self.watch(wake.clone());
        let bytes = self
            .read()
            .await
            .map_err(|(path, source)| FollowError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        let value = parse(&bytes).map_err(FollowError::Invalid)?;
        let current = Arc::new(ArcSwap::from_pointee(value));
        let (status, receiver) = watch::channel(FollowStatus::default());
        let follower = Follower {
            set: self,
            parse,
            current: current.clone(),
            status,
            hook,
        };
        let task = tokio::spawn(follower.run(bytes, wake, watcher));
        Ok(Followed {
            current,
            status: receiver,
            task,
        })
    }

    async fn read(&self) -> Result<Vec<Vec<u8>>, (&Path, std::io::Error)> {
        let mut out = Vec::with_capacity(self.paths.len());
        for path in &self.paths {
            out.push(
                tokio::fs::read(path)
                    .await
                    .map_err(|e| (path.as_path(), e))?,
            );
        }
        Ok(out)
    }

    fn watch(&self, wake: Arc<Notify>) -> Option<RecommendedWatcher> {
        if !self.inotify {
            return None;
        }
        match file_events::watch_directories_of(&self.paths, wake) {
            Ok(watcher) => Some(watcher),
            Err(error) => {
                tracing::warn!(what = self.what, %error, poll = ?self.poll, "cannot watch for changes; polling");
                None
            }
        }
    }
}

/// The value in force, and the follower keeping it current; dropping it stops
/// following (the last value stays readable through clones of `current`).
#[derive(Debug)]
pub struct Followed<T> {
    current: Arc<ArcSwap<T>>,
    status: watch::Receiver<FollowStatus>,
    task: JoinHandle<()>,
}

impl<T> Drop for Followed<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<T> Followed<T> {
    /// The value in force, shared with whoever reads it on each use.
    pub fn current(&self) -> Arc<ArcSwap<T>> {
        self.current.clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<FollowStatus> {
        self.status.clone()
    }
}

struct Follower<T, P> {
    set: FileSet,
    parse: P,
    current: Arc<ArcSwap<T>>,
    status: watch::Sender<FollowStatus>,
    hook: Option<OutcomeHook>,
}

impl<T, E, P> Follower<T, P>
where
    E: Display,
    P: Fn(&[Vec<u8>]) -> Result<T, E>,
{
    async fn run(
        self,
        mut applied: Vec<Vec<u8>>,
        wake: Arc<Notify>,
        _watcher: Option<RecommendedWatcher>,
    ) {
        // The last rejected content: not parsed (nor logged) again until it changes.
        let mut rejected: Option<Vec<Vec<u8>>> = None;
        loop {
            tokio::select! {
                () = wake.notified() => tokio::time::sleep(self.set.settle).await,
                () = tokio::time::sleep(self.set.poll) => {}
            }
            let bytes = match self.set.read().await {
                Ok(bytes) => bytes,
                Err((path, error)) => {
                    self.reject(format!("reading {}: {error}", path.display()));
                    continue;
                }
            };
            if bytes == applied {
                // A bad edit undone: nothing is wrong any more.
                rejected = None;
                self.status.send_if_modified(|s| {
                    let cleared = s.last_error.take().is_some();
                    if cleared {
                        tracing::info!(what = self.set.what, paths = ?self.set.paths, "file matches what is in force again");
                    }
                    cleared
                });
                continue;
            }
            if rejected.as_ref() == Some(&bytes) {
                continue;
            }
            match (self.parse)(&bytes) {
                Ok(value) => {
                    tracing::info!(what = self.set.what, paths = ?self.set.paths, "file changed; applying");
                    self.current.store(Arc::new(value));
                    applied = bytes;
                    rejected = None;
                    self.status.send_modify(|s| {
                        s.generation += 1;
                        s.last_error = None;
                    });
                    self.outcome(Outcome::Applied);
                }
                Err(error) => {
                    rejected = Some(bytes);
                    self.reject(error.to_string());
                }
            }
        }
    }

    /// Keeps the value in force and records why the files are not used; the
    /// same reason twice in a row (an unreadable file polled) is logged once.
    fn reject(&self, reason: String) {
        let changed = self.status.send_if_modified(|s| {
            if s.last_error.as_deref() == Some(reason.as_str()) {
                return false;
            }
            tracing::warn!(what = self.set.what, error = %reason, "change rejected; keeping the last good one");
            s.rejected += 1;
            s.last_error = Some(reason.clone());
            true
        });
        if changed {
            self.outcome(Outcome::Rejected);
        }
    }

    fn outcome(&self, outcome: Outcome) {
        if let Some(hook) = &self.hook {
            hook(outcome);
        }
    }
}

#[cfg(test)]
mod tests;
