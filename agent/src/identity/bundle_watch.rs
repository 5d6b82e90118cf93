//! The trust bundle file, followed while the agent runs. A root rotation first
//! adds the new root to the file and later removes the old one; the agent must
//! trust what the file says at each step without a restart.
//!
//! Wake-ups come from inotify on the file's directory (see `file_events`) with
//! a slow poll beside it, or from the poll alone where inotify is unavailable.
//! Each wake-up reads the file and compares its bytes with the bundle in force
//! and with the last rejected content, so only a real change is parsed and
//! published. A change that does not validate is logged with the path and the
//! reason, and the last good bundle stays in force: refusing every peer because
//! of a bad edit would be an outage.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::RecommendedWatcher;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::certificate::{TrustBundle, TrustBundleError};
use ambit_ca::file_events;

/// The bundle in force and how following the file has gone.
#[derive(Clone, Debug)]
pub struct BundleStatus {
    pub bundle: TrustBundle,
    /// Bundles applied since the one read at start (which is generation 0).
    pub generation: u64,
    /// Changes (or failed reads) rejected since start.
    pub rejected: u64,
    /// Why the file's current content is not in force, while it is not.
    pub last_error: Option<String>,
}

/// A trust bundle file and how to follow it.
#[derive(Clone, Debug)]
pub struct TrustBundleFile {
    path: PathBuf,
    trust_domain: String,
    /// Re-read period: beside inotify a backstop, alone the only trigger.
    poll: Duration,
    /// Quiet time after an event, so the writes of one update are read once.
    settle: Duration,
    inotify: bool,
}

/// The running follower; dropping it stops following.
#[derive(Debug)]
pub struct BundleWatch {
    path: PathBuf,
    status: watch::Receiver<BundleStatus>,
    task: JoinHandle<()>,
}

impl Drop for BundleWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl BundleWatch {
    /// Changes to the bundle in force and to the follower's status.
    pub fn subscribe(&self) -> watch::Receiver<BundleStatus> {
        self.status.clone()
    }

    pub fn current(&self) -> BundleStatus {
        self.status.borrow().clone()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl TrustBundleFile {
    pub fn new(path: impl Into<PathBuf>, trust_domain: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            trust_domain: trust_domain.into(),
            poll: Duration::from_secs(5),
            settle: Duration::from_millis(100),
            inotify: true,
        }
    }

    /// Re-read period (default 5 s).
    pub fn with_poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// Polls only, for filesystems where inotify sees nothing.
    pub fn polling_only(mut self) -> Self {
        self.inotify = false;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the bundle, failing if it is unusable (without roots the agent
    /// can verify nobody), then follows the file until the watch is dropped.
    pub async fn start(self) -> Result<BundleWatch, TrustBundleError> {
        // Watch before the first read, so an update racing it is not missed.
        let wake = Arc::new(Notify::new());
        let watcher = self.watch_events(wake.clone());
        let bytes = tokio::fs::read(&self.path)
            .await
            .map_err(|source| TrustBundleError::Read {
                path: self.path.clone(),
                source,
            })?;
        let bundle = self.parse(&bytes)?;
        tracing::info!(
            path = %self.path.display(),
            roots = bundle.roots.len(),
            fingerprints = ?bundle.fingerprints(),
            "trust bundle loaded"
        );
        let (status, receiver) = watch::channel(BundleStatus {
            bundle,
            generation: 0,
            rejected: 0,
            last_error: None,
        });
        let path = self.path.clone();
        let task = tokio::spawn(self.follow(status, bytes, wake, watcher));
        Ok(BundleWatch {
            path,
            status: receiver,
            task,
        })
    }

    fn parse(&self, bytes: &[u8]) -> Result<TrustBundle, TrustBundleError> {
        TrustBundle::from_pem(bytes, &self.trust_domain).map_err(|defect| {
            TrustBundleError::Invalid {
                path: self.path.clone(),
                defect,
            }
        })
    }

    fn watch_events(&self, wake: Arc<Notify>) -> Option<RecommendedWatcher> {
        if !self.inotify {
            return None;
        }
        match file_events::watch_directory_of(&self.path, wake) {
            Ok(watcher) => Some(watcher),
            Err(error) => {
                tracing::warn!(path = %self.path.display(), %error, poll = ?self.poll, "cannot watch the trust bundle for changes; polling");
                None
            }
        }
    }

    async fn follow(
        self,
        status: watch::Sender<BundleStatus>,
        mut applied: Vec<u8>,
        wake: Arc<Notify>,
        _watcher: Option<RecommendedWatcher>,
    ) {
        // The last rejected content: not parsed (nor logged) again until it changes.
        let mut rejected: Option<Vec<u8>> = None;
        loop {
            tokio::select! {
                () = wake.notified() => tokio::time::sleep(self.settle).await,
                () = tokio::time::sleep(self.poll) => {}
            }
            let bytes = match tokio::fs::read(&self.path).await {
                Ok(bytes) => bytes,
                Err(source) => {
                    self.reject(
                        &status,
                        TrustBundleError::Read {
                            path: self.path.clone(),
                            source,
                        },
                    );
                    continue;
                }
            };
            if bytes == applied {
                // A bad edit undone, or a file restored: nothing wrong any more.
                rejected = None;
                status.send_if_modified(|s| {
                    let cleared = s.last_error.take().is_some();
                    if cleared {
                        tracing::info!(path = %self.path.display(), "trust bundle file matches the bundle in force again");
                    }
                    cleared
                });
                continue;
            }
            if rejected.as_ref() == Some(&bytes) {
                continue;
            }
            match self.parse(&bytes) {
                Ok(bundle) => {
                    tracing::info!(
                        path = %self.path.display(),
                        roots = bundle.roots.len(),
                        fingerprints = ?bundle.fingerprints(),
                        "trust bundle changed; applying"
                    );
                    applied = bytes;
                    rejected = None;
                    status.send_modify(|s| {
                        s.bundle = bundle;
                        s.generation += 1;
                        s.last_error = None;
                    });
                }
                Err(error) => {
                    rejected = Some(bytes);
                    self.reject(&status, error);
                }
            }
        }
    }

    /// Keeps the bundle in force and records why the file's content is not used;
    /// the same reason twice in a row (an unreadable file polled) is logged once.
    fn reject(&self, status: &watch::Sender<BundleStatus>, error: TrustBundleError) {
        let reason = error.to_string();
        status.send_if_modified(|s| {
            if s.last_error.as_deref() == Some(reason.as_str()) {
                return false;
            }
            tracing::warn!(%error, "trust bundle rejected; keeping the last good one");
            s.rejected += 1;
            s.last_error = Some(reason.clone());
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::identity::certificate::tests::self_signed;

    async fn until(
        what: &str,
        rx: &mut watch::Receiver<BundleStatus>,
        done: impl Fn(&BundleStatus) -> bool,
    ) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done(&rx.borrow_and_update()) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                tokio::time::timeout(left, rx.changed()).await.is_ok(),
                "timed out waiting for {what}: {:?}",
                rx.borrow().last_error
            );
        }
    }

    fn replace(path: &Path, content: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    #[tokio::test]
    async fn applies_valid_changes_and_keeps_the_last_good_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("roots.pem");
        let (a, b) = (self_signed("a", true), self_signed("b", true));
        std::fs::write(&path, &a).unwrap();
        let watch = TrustBundleFile::new(&path, "cluster.local")
            .polling_only()
            .with_poll_interval(Duration::from_millis(30))
            .start()
            .await
            .unwrap();
        let mut rx = watch.subscribe();
        let first = watch.current();
        assert_eq!((first.generation, first.bundle.roots.len()), (0, 1));

        replace(&path, &format!("{a}{b}"));
        until("a+b", &mut rx, |s| s.generation == 1).await;
        let both = watch.current().bundle;
        assert_eq!(both.roots.len(), 2);
        assert_eq!(both.fingerprints()[0], first.bundle.fingerprints()[0]);

        for (content, reason) in [
            ("", "holds no certificate"),
            (
                self_signed("leaf", false).as_str(),
                "is not a CA certificate",
            ),
        ] {
            let rejected = watch.current().rejected;
            replace(&path, content);
            until(reason, &mut rx, |s| s.rejected == rejected + 1).await;
            let status = watch.current();
            let error = status.last_error.unwrap();
            assert!(error.contains(&path.display().to_string()), "{error}");
            assert!(error.contains(reason), "{error}");
            assert_eq!(status.generation, 1);
            assert_eq!(status.bundle.roots, both.roots);
        }
        std::fs::remove_file(&path).unwrap();
        until("unreadable", &mut rx, |s| s.rejected == 3).await;
        assert!(
            watch
                .current()
                .last_error
                .unwrap()
                .contains("reading trust bundle")
        );

        // Restoring the content in force clears the error without a reload.
        replace(&path, &format!("{a}{b}"));
        until("restored", &mut rx, |s| s.last_error.is_none()).await;
        assert_eq!(
            (watch.current().generation, watch.current().rejected),
            (1, 3)
        );
    }

    #[tokio::test]
    async fn inotify_sees_a_replaced_file_before_the_poll() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("roots.pem");
        std::fs::write(&path, self_signed("a", true)).unwrap();
        let watch = TrustBundleFile::new(&path, "cluster.local")
            .with_poll_interval(Duration::from_secs(3600))
            .start()
            .await
            .unwrap();
        let mut rx = watch.subscribe();
        replace(&path, &self_signed("b", true));
        until("the change", &mut rx, |s| s.generation == 1).await;
    }

    #[tokio::test]
    async fn an_unusable_bundle_at_start_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("roots.pem");
        std::fs::write(&path, "garbage").unwrap();
        let error = TrustBundleFile::new(&path, "cluster.local")
            .start()
            .await
            .unwrap_err();
        assert!(matches!(error, TrustBundleError::Invalid { .. }), "{error}");
    }
}
