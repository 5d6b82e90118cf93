//! Wake-ups when a watched input file may have changed: the agent's state
//! file or folder and trust bundle, the CA's tokens file and serving
//! certificate. Callers re-read and compare on each wake-up, so an event here
//! means "look again", never "this changed".
//!
//! A file is watched through its directory, because the usual ways of updating
//! one replace it: an editor or `mv` renaming a new file over it, a Kubernetes
//! ConfigMap or Secret volume swapping its `..data` symlink. A watch on the file
//! itself would follow the replaced inode and see nothing more.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::Notify;

/// Rings `wake` on any change in `path` when it is a directory, else in the
/// directory holding it. The watch lasts as long as the returned watcher.
pub fn watch_directory_of(path: &Path, wake: Arc<Notify>) -> notify::Result<RecommendedWatcher> {
    watch_directories_of(std::slice::from_ref(&path.to_path_buf()), wake)
}

/// As [`watch_directory_of`], for several paths (each directory once).
pub fn watch_directories_of(
    paths: &[PathBuf],
    wake: Arc<Notify>,
) -> notify::Result<RecommendedWatcher> {
    let handler = move |event: notify::Result<notify::Event>| {
        let relevant = match event {
            // Our own reads open and close the files: only a writer closing counts.
            Ok(e) => match e.kind {
                EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
                EventKind::Access(_) => false,
                _ => true,
            },
            // A lost or overflowed event queue may hide a change: look again.
            Err(_) => true,
        };
        if relevant {
            wake.notify_one();
        }
    };
    let mut watcher = notify::recommended_watcher(handler)?;
    let mut dirs: Vec<PathBuf> = paths.iter().map(|p| watched_directory(p)).collect();
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    }
    Ok(watcher)
}

/// The directory whose entries decide what `path` reads as.
pub fn watched_directory(path: &Path) -> PathBuf {
    if path.is_dir() {
        return path.to_owned();
    }
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}
