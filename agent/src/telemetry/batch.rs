//! Log lines written in batches. A line from a runtime worker waits in memory
//! until that worker or another is about to park (the agent has nothing else
//! to do, so the write delays no request), or until 64 KiB wait; under load
//! many access lines then leave in one write instead of one write each, as
//! Envoy's access log flushes on an interval. Lines from any other thread
//! (start-up, shutdown, blocking tasks) are written at once, after what waits.
//!
//! What a kill -9 can lose is what waited since the last park: a worker parks
//! whenever it runs out of work, so under a millisecond of lines unless it is
//! saturated.

use std::cell::Cell;
use std::io::{self, Write};
use std::sync::Arc;

use parking_lot::Mutex;
use tracing_subscriber::fmt::MakeWriter;

/// Bytes that may wait before a line is written at once.
const LIMIT: usize = 64 * 1024;

thread_local! {
    static BATCHING: Cell<bool> = const { Cell::new(false) };
}

/// Marks the calling thread as one whose lines may wait for a flush: a
/// runtime worker, which flushes before it parks (`on_thread_park`).
pub fn batch_this_thread() {
    BATCHING.set(true);
}

/// A [`MakeWriter`] gathering lines for `W`; clones share the batch.
pub struct Batched<W> {
    shared: Arc<Shared<W>>,
}

impl<W> Clone for Batched<W> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

struct Shared<W> {
    /// Taken before `waiting` whenever both are held, so batches leave in
    /// the order they were gathered.
    out: Mutex<W>,
    waiting: Mutex<Vec<u8>>,
}

impl<W: Write> Batched<W> {
    pub fn new(out: W) -> Self {
        Self {
            shared: Arc::new(Shared {
                out: Mutex::new(out),
                waiting: Mutex::new(Vec::with_capacity(LIMIT)),
            }),
        }
    }

    /// Writes what waits.
    pub fn flush(&self) {
        let mut out = self.shared.out.lock();
        let batch = std::mem::take(&mut *self.shared.waiting.lock());
        if !batch.is_empty() {
            // Nowhere to report a failed log write but the log itself.
            let _ = out.write_all(&batch);
            let _ = out.flush();
        }
    }
}

/// One event's writer: the fmt layer formats an event whole and writes it
/// with one `write_all`, so lines from different threads never interleave.
pub struct Line<'a, W> {
    shared: &'a Batched<W>,
}

impl<W: Write> Write for Line<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let full = {
            let mut waiting = self.shared.shared.waiting.lock();
            waiting.extend_from_slice(buf);
            waiting.len() >= LIMIT
        };
        if full || !BATCHING.get() {
            self.shared.flush();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a, W: Write + 'a> MakeWriter<'a> for Batched<W> {
    type Writer = Line<'a, W>;

    fn make_writer(&'a self) -> Self::Writer {
        Line { shared: self }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_worker_s_lines_wait_for_a_flush_and_leave_in_one_write() {
        let sink = Sink::default();
        let batched = Batched::new(sink.clone());
        std::thread::scope(|s| {
            s.spawn(|| {
                batch_this_thread();
                batched.make_writer().write_all(b"one\n").unwrap();
                batched.make_writer().write_all(b"two\n").unwrap();
            });
        });
        assert!(sink.0.lock().is_empty());
        // Another thread's line goes at once, after what waited.
        batched.make_writer().write_all(b"three\n").unwrap();
        assert_eq!(*sink.0.lock(), [b"one\ntwo\nthree\n".to_vec()]);
        batched.flush();
        assert_eq!(sink.0.lock().len(), 1);
    }

    #[test]
    fn a_full_batch_is_written_without_waiting() {
        let sink = Sink::default();
        let batched = Batched::new(sink.clone());
        std::thread::scope(|s| {
            s.spawn(|| {
                batch_this_thread();
                let line = vec![b'x'; 1000];
                for _ in 0..LIMIT / 1000 + 1 {
                    batched.make_writer().write_all(&line).unwrap();
                }
            });
        });
        let written: usize = sink.0.lock().iter().map(Vec::len).sum();
        assert!(written >= LIMIT, "{written}");
    }
}
