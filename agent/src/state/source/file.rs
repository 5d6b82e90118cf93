//! The file source: Kubernetes-shaped YAML or JSON in one file or a folder,
//! loaded at start and watched for edits.
//!
//! Change detection is inotify (the `notify` crate) on the file's directory, so
//! editors and tools that replace a file by renaming a new one over it (vim,
//! `kubectl ... > tmp && mv`, ConfigMap volume updates) are seen like in-place
//! writes. A slow poll runs beside it as a backstop, and alone when inotify is
//! unavailable. Every wake-up re-reads the input and compares a fingerprint, so
//! spurious events cost a read, never a rebuild.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::RecommendedWatcher;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::state::{LoadError, LoadOptions, Snapshot, SnapshotBuilder, StateStore};
use ambit_ca::file_events;

/// File name extensions read from a folder.
const EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// A file or folder of state, and how to watch it.
#[derive(Clone, Debug)]
pub struct FileSource {
    path: PathBuf,
    options: LoadOptions,
    /// Quiet time after a change event before reloading, so a burst of
    /// writes from one save is read once.
    settle: Duration,
    /// Poll period when inotify is unavailable.
    poll: Duration,
    /// Poll period beside inotify, for changes it cannot see (a watched
    /// folder itself replaced).
    backstop: Duration,
    inotify: bool,
}

/// The running watcher; dropping it stops watching.
#[derive(Debug)]
pub struct FileWatch {
    task: JoinHandle<()>,
}

impl Drop for FileWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a re-read found, by input fingerprint.
enum Reread {
    Unchanged(u64),
    Changed(u64, Box<Result<Snapshot, LoadError>>),
}

/// The files of one read, in load order.
struct Input {
    root: PathBuf,
    files: Vec<(PathBuf, String)>,
}

impl FileSource {
    pub fn new(path: impl Into<PathBuf>, options: LoadOptions) -> Self {
        Self {
            path: path.into(),
            options,
            settle: Duration::from_millis(100),
            poll: Duration::from_millis(500),
            backstop: Duration::from_secs(5),
            inotify: true,
        }
    }

    /// Polling period used when inotify cannot be set up (default 500 ms).
    pub fn with_poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// Polls only, for filesystems where inotify sees nothing (some network
    /// and FUSE mounts).
    pub fn polling_only(mut self) -> Self {
        self.inotify = false;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads and validates the state once. Blocking: file I/O and parsing.
    pub fn load(&self) -> Result<Snapshot, LoadError> {
        build(&read_input(&self.path)?, &self.options)
    }

    /// Loads the state into `store`, failing if that first load fails, then
    /// watches for edits until the returned `FileWatch` is dropped.
    pub async fn start(self, store: StateStore) -> Result<FileWatch, LoadError> {
        // Watch before the first read, so an edit racing it is not missed.
        let wake = Arc::new(Notify::new());
        let watcher = self.watch_events(wake.clone());
        let this = self.clone();
        let first = tokio::task::spawn_blocking(move || {
            let input = read_input(&this.path)?;
            let snapshot = build(&input, &this.options)?;
            Ok::<_, LoadError>((fingerprint(&input), snapshot))
        })
        .await;
        let (applied, snapshot) = match first {
            Ok(result) => result?,
            Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            Err(_) => return Err(LoadError::Interrupted),
        };
        self.publish(&store, snapshot);
        let task = tokio::spawn(self.follow(store, applied, wake, watcher));
        Ok(FileWatch { task })
    }

    /// Sets up inotify on the directory holding the input; `None` means the
    /// caller polls instead.
    fn watch_events(&self, wake: Arc<Notify>) -> Option<RecommendedWatcher> {
        if !self.inotify {
            return None;
        }
        match file_events::watch_directory_of(&self.path, wake) {
            Ok(w) => Some(w),
            Err(error) => {
                let dir = file_events::watched_directory(&self.path);
                tracing::warn!(dir = %dir.display(), %error, poll = ?self.poll, "cannot watch state for changes; polling");
                None
            }
        }
    }

    async fn follow(
        self,
        store: StateStore,
        applied: u64,
        wake: Arc<Notify>,
        watcher: Option<RecommendedWatcher>,
    ) {
        let period = if watcher.is_some() {
            self.backstop
        } else {
            self.poll
        };
        let _watcher = watcher;
        // Fingerprints of the input in force and of the last one tried: a
        // rejected input is not rebuilt until it changes again.
        let (mut applied, mut tried) = (applied, applied);
        let mut last_error = None;
        loop {
            tokio::select! {
                () = wake.notified() => tokio::time::sleep(self.settle).await,
                () = tokio::time::sleep(period) => {}
            }
            let this = self.clone();
            let attempt = tokio::task::spawn_blocking(move || {
                let input = read_input(&this.path)?;
                let print = fingerprint(&input);
                if print == applied || print == tried {
                    return Ok(Reread::Unchanged(print));
                }
                Ok(Reread::Changed(
                    print,
                    Box::new(build(&input, &this.options)),
                ))
            })
            .await;
            let outcome = match attempt {
                Ok(Ok(Reread::Unchanged(print))) => {
                    // Back to the input in force (a bad edit undone, a
                    // deleted file restored): nothing to apply, nothing wrong.
                    if print == applied && last_error.take().is_some() {
                        tried = applied;
                        store.clear_failure();
                        tracing::info!(path = %self.path.display(), "state input matches the applied state again");
                    }
                    continue;
                }
                Ok(Ok(Reread::Changed(print, built))) => {
                    tried = print;
                    if built.is_ok() {
                        applied = print;
                    }
                    *built
                }
                Ok(Err(read_error)) => Err(read_error),
                Err(join) => {
                    tracing::error!(error = %join, "state reload panicked");
                    continue;
                }
            };
            match outcome {
                Ok(snapshot) => {
                    last_error = None;
                    self.publish(&store, snapshot);
                }
                Err(error) => {
                    let message = error.to_string();
                    if last_error.as_ref() != Some(&message) {
                        tracing::warn!(%error, "state rejected; keeping the last good state");
                        store.report_failure(message.clone());
                        last_error = Some(message);
                    }
                }
            }
        }
    }

    fn publish(&self, store: &StateStore, snapshot: Snapshot) {
        let workloads = snapshot.workloads().count();
        let services = snapshot.services().count();
        for issue in snapshot.policy_errors() {
            tracing::warn!(%issue, "invalid policy; enforced fail-closed");
        }
        let generation = store.replace(snapshot);
        tracing::info!(
            path = %self.path.display(),
            generation,
            workloads,
            services,
            "state applied"
        );
    }
}

fn read_input(path: &Path) -> Result<Input, LoadError> {
    let read_error = |path: &Path| {
        let path = path.to_owned();
        move |source| LoadError::Read { path, source }
    };
    let meta = std::fs::metadata(path).map_err(read_error(path))?;
    let mut paths = Vec::new();
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).map_err(read_error(path))? {
            let entry = entry.map_err(read_error(path))?;
            let file = entry.path();
            if is_state_file(&file) && file.is_file() {
                paths.push(file);
            }
        }
        paths.sort();
    } else {
        paths.push(path.to_owned());
    }
    let files = paths
        .into_iter()
        .map(|p| {
            std::fs::read_to_string(&p)
                .map(|text| (p.clone(), text))
                .map_err(read_error(&p))
        })
        .collect::<Result<_, _>>()?;
    Ok(Input {
        root: path.to_owned(),
        files,
    })
}

/// `*.yaml`, `*.yml`, `*.json`, skipping hidden files (editor swap files,
/// the `..data` links of a ConfigMap volume).
fn is_state_file(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    let known = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.contains(&e));
    !hidden && known
}

fn fingerprint(input: &Input) -> u64 {
    let mut h = DefaultHasher::new();
    input.files.hash(&mut h);
    h.finish()
}

fn build(input: &Input, options: &LoadOptions) -> Result<Snapshot, LoadError> {
    let mut builder = SnapshotBuilder::new(options);
    for (path, text) in &input.files {
        builder.add_text(path, text)?;
    }
    if builder.object_count() == 0 {
        // An empty input is far more likely a half-written file than an
        // intended cluster without pods; serving it would drop all traffic.
        return Err(LoadError::Empty {
            path: input.root.clone(),
        });
    }
    builder.build()
}

#[cfg(test)]
mod tests;
