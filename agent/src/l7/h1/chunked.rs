//! Where a chunked body ends (RFC 9112 §7.1), found as its bytes pass: the
//! bytes are forwarded as they came, and this only follows the chunk sizes
//! (read by httparse), the CRLF after each chunk and the trailer section.

/// Longest chunk-size line (with extensions) waited for.
const MAX_SIZE_LINE: usize = 1024;
/// Largest trailer section waited for.
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("invalid chunk size line")]
    Size,
    #[error("chunk data not followed by CRLF")]
    MissingCrlf,
    #[error("invalid trailer section")]
    Trailers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

/// Follows one chunked body.
#[derive(Debug)]
pub struct Chunked {
    state: State,
    /// Chunk data bytes so far (the body's size without the framing).
    pub data: u64,
}

impl Default for Chunked {
    fn default() -> Self {
        Self {
            state: State::Size,
            data: 0,
        }
    }
}

impl Chunked {
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// How many bytes at the front of `buf` belong to the body and are
    /// understood; the rest waits for more bytes (or, once done, is the
    /// next message).
    pub fn advance(&mut self, buf: &[u8]) -> Result<usize, ChunkError> {
        let mut at = 0;
        loop {
            let rest = &buf[at..];
            match self.state {
                State::Done => return Ok(at),
                State::Size => match httparse::parse_chunk_size(rest) {
                    Ok(httparse::Status::Complete((used, 0))) => {
                        at += used;
                        self.state = State::Trailers;
                    }
                    Ok(httparse::Status::Complete((used, size))) => {
                        at += used;
                        self.state = State::Data(size);
                    }
                    Ok(httparse::Status::Partial) if rest.len() > MAX_SIZE_LINE => {
                        return Err(ChunkError::Size);
                    }
                    Ok(httparse::Status::Partial) => return Ok(at),
                    Err(httparse::InvalidChunkSize) => return Err(ChunkError::Size),
                },
                State::Data(left) => {
                    if rest.is_empty() {
                        return Ok(at);
                    }
                    let take = left.min(rest.len() as u64);
                    at += take as usize;
                    self.data += take;
                    self.state = if take == left {
                        State::DataEnd
                    } else {
                        State::Data(left - take)
                    };
                }
                State::DataEnd => {
                    if rest.len() < 2 {
                        if rest.first().is_some_and(|&b| b != b'\r') {
                            return Err(ChunkError::MissingCrlf);
                        }
                        return Ok(at);
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(ChunkError::MissingCrlf);
                    }
                    at += 2;
                    self.state = State::Size;
                }
                State::Trailers => {
                    let mut fields = [httparse::EMPTY_HEADER; 32];
                    match httparse::parse_headers(rest, &mut fields) {
                        Ok(httparse::Status::Complete((used, _))) => {
                            at += used;
                            self.state = State::Done;
                        }
                        Ok(httparse::Status::Partial) if rest.len() > MAX_TRAILERS => {
                            return Err(ChunkError::Trailers);
                        }
                        Ok(httparse::Status::Partial) => return Ok(at),
                        Err(_) => return Err(ChunkError::Trailers),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `body` in pieces of `step` bytes as a connection would.
    fn follow(body: &[u8], step: usize) -> Result<(usize, u64), ChunkError> {
        let mut c = Chunked::default();
        let mut pending: Vec<u8> = Vec::new();
        let mut used = 0;
        for piece in body.chunks(step) {
            pending.extend_from_slice(piece);
            let n = c.advance(&pending)?;
            used += n;
            pending.drain(..n);
            if c.is_done() {
                return Ok((used, c.data));
            }
        }
        Ok((usize::MAX, c.data))
    }

    #[test]
    fn finds_the_end_however_the_bytes_arrive() {
        let body = b"5\r\nhello\r\n1;ext=v\r\n!\r\n0\r\nx-trailer: 1\r\n\r\nGET /next";
        let end = body.len() - b"GET /next".len();
        for step in [1, 2, 3, 7, body.len()] {
            assert_eq!(follow(body, step), Ok((end, 6)), "step {step}");
        }
        assert_eq!(follow(b"0\r\n\r\n", 1), Ok((5, 0)));
    }

    #[test]
    fn refuses_what_a_pod_might_read_differently() {
        for bad in [
            &b"5\r\nhelloXX0\r\n\r\n"[..],
            b"zz\r\n",
            b"fffffffffffffffffffff\r\n",
            b"5\r\nhello\n\n0\r\n\r\n",
            b"0\r\nbad trailer\r\n\r\n",
        ] {
            assert!(
                follow(bad, 1).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
