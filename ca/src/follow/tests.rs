use std::time::Instant;

use super::*;

#[derive(Debug, thiserror::Error)]
#[error("not a number: {0:?}")]
struct NotANumber(String);

fn number(files: &[Vec<u8>]) -> Result<u32, NotANumber> {
    let text = String::from_utf8_lossy(&files[0]).trim().to_string();
    text.parse().map_err(|_| NotANumber(text))
}

fn replace(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn until(
    what: &str,
    rx: &mut watch::Receiver<FollowStatus>,
    done: impl Fn(&FollowStatus) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done(&rx.borrow_and_update()) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            tokio::time::timeout(left, rx.changed()).await.is_ok(),
            "timed out waiting for {what}: {:?}",
            *rx.borrow()
        );
    }
}

#[tokio::test]
async fn applies_good_changes_and_keeps_the_last_good_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("n.txt");
    std::fs::write(&path, "1").unwrap();
    let outcomes = Arc::new(outcome_counts::Counts::default());
    let hook_counts = outcomes.clone();
    let followed = FileSet::new("number", vec![path.clone()])
        .with_poll_interval(Duration::from_secs(3600))
        .start(number, Some(Arc::new(move |o| hook_counts.record(o))))
        .await
        .unwrap();
    let current = followed.current();
    let mut rx = followed.subscribe();
    assert_eq!(**current.load(), 1);

    // inotify, not the hour-long poll, notices each replacement.
    replace(&path, "2");
    until("2", &mut rx, |s| s.generation == 1).await;
    assert_eq!(**current.load(), 2);

    replace(&path, "garbage");
    until("rejection", &mut rx, |s| s.rejected == 1).await;
    let error = rx.borrow().last_error.clone().unwrap();
    assert!(error.contains("garbage"), "{error}");
    assert_eq!(**current.load(), 2, "the last good value stays");

    replace(&path, "2");
    until("restored", &mut rx, |s| s.last_error.is_none()).await;
    assert_eq!(outcomes.get(), (1, 1));
}

#[tokio::test]
async fn unusable_files_at_start_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("n.txt");
    let missing = FileSet::new("number", vec![path.clone()])
        .start(number, None)
        .await
        .unwrap_err();
    assert!(matches!(missing, FollowError::Read { .. }), "{missing}");
    std::fs::write(&path, "x").unwrap();
    let bad = FileSet::new("number", vec![path])
        .start(number, None)
        .await
        .unwrap_err();
    assert!(matches!(bad, FollowError::Invalid(_)), "{bad}");
}

mod outcome_counts {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::Outcome;

    /// Outcomes seen by the hook.
    #[derive(Default)]
    pub struct Counts {
        applied: AtomicU64,
        rejected: AtomicU64,
    }

    impl Counts {
        pub fn record(&self, outcome: Outcome) {
            match outcome {
                Outcome::Applied => self.applied.fetch_add(1, Ordering::SeqCst),
                Outcome::Rejected => self.rejected.fetch_add(1, Ordering::SeqCst),
            };
        }

        pub fn get(&self) -> (u64, u64) {
            (
                self.applied.load(Ordering::SeqCst),
                self.rejected.load(Ordering::SeqCst),
            )
        }
    }
}
