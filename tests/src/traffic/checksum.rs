//! A fast checksum over a byte stream that does not depend on how the
//! stream was split into reads, and a deterministic byte pattern to send.
//!
//! Not cryptographic: it exists to catch lost, duplicated, reordered or
//! corrupted bytes on the way through the cluster (and, later, the mesh)
//! at many Gbit/s without becoming the bottleneck.

use std::fmt;
use std::str::FromStr;

const MUL: u64 = 0x9E37_79B9_7F4A_7C15;

/// Running checksum; feed it with [`Checksum::update`] in any chunking.
#[derive(Clone, Debug)]
pub struct Checksum {
    state: u64,
    len: u64,
    /// Bytes of a not yet complete 8-byte word.
    pending: [u8; 8],
    pending_len: usize,
}

/// Byte count and checksum of a stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Transfer {
    pub bytes: u64,
    pub checksum: u64,
}

impl Default for Checksum {
    fn default() -> Self {
        Self::new()
    }
}

impl Checksum {
    pub fn new() -> Self {
        Self {
            state: 0x243F_6A88_85A3_08D3,
            len: 0,
            pending: [0; 8],
            pending_len: 0,
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.pending_len > 0 {
            let take = (8 - self.pending_len).min(data.len());
            self.pending[self.pending_len..self.pending_len + take].copy_from_slice(&data[..take]);
            self.pending_len += take;
            data = &data[take..];
            if self.pending_len < 8 {
                return;
            }
            self.mix(u64::from_le_bytes(self.pending));
            self.pending_len = 0;
        }
        let mut words = data.chunks_exact(8);
        for word in &mut words {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(word);
            self.mix(u64::from_le_bytes(bytes));
        }
        let rest = words.remainder();
        self.pending[..rest.len()].copy_from_slice(rest);
        self.pending_len = rest.len();
    }

    fn mix(&mut self, word: u64) {
        self.state = (self.state.rotate_left(23) ^ word).wrapping_mul(MUL);
    }

    pub fn finish(&self) -> Transfer {
        let mut last = [0u8; 8];
        last[..self.pending_len].copy_from_slice(&self.pending[..self.pending_len]);
        let mut state = (self.state.rotate_left(23) ^ u64::from_le_bytes(last)).wrapping_mul(MUL);
        state ^= self.len;
        state ^= state >> 33;
        state = state.wrapping_mul(MUL);
        state ^= state >> 29;
        Transfer {
            bytes: self.len,
            checksum: state,
        }
    }
}

impl fmt::Display for Transfer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bytes={} checksum={:016x}", self.bytes, self.checksum)
    }
}

impl FromStr for Transfer {
    type Err = ();

    /// Parses the [`Display`](fmt::Display) form `bytes=<n> checksum=<hex>`.
    fn from_str(s: &str) -> Result<Self, ()> {
        let mut parts = s.split_whitespace();
        let bytes = parts
            .next()
            .and_then(|p| p.strip_prefix("bytes="))
            .ok_or(())?;
        let sum = parts
            .next()
            .and_then(|p| p.strip_prefix("checksum="))
            .ok_or(())?;
        if parts.next().is_some() {
            return Err(());
        }
        Ok(Self {
            bytes: bytes.parse().map_err(|_| ())?,
            checksum: u64::from_str_radix(sum, 16).map_err(|_| ())?,
        })
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), so a receiver's
/// checksum catches any reordering, not only lost bytes.
#[derive(Clone, Debug)]
pub struct Pattern {
    state: u64,
}

impl Pattern {
    pub fn new(seed: u64) -> Self {
        // xorshift must not start at zero.
        Self {
            state: seed ^ 0x5DEE_CE66_D1CE_4E5B,
        }
    }

    /// Fills `buf` with the next bytes of the pattern. Calls are chunked
    /// per 8-byte word, so senders should always fill same-sized buffers.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for word in buf.chunks_mut(8) {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            let v = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            word.copy_from_slice(&v[..word.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        Pattern::new(7).fill(&mut buf);
        buf
    }

    #[test]
    fn chunking_does_not_change_the_checksum() {
        let buf = data(10_007);
        let mut whole = Checksum::new();
        whole.update(&buf);
        for chunk in [1, 3, 7, 8, 9, 1000, 4096] {
            let mut split = Checksum::new();
            buf.chunks(chunk).for_each(|c| split.update(c));
            assert_eq!(split.finish(), whole.finish(), "chunk {chunk}");
        }
        assert_eq!(whole.finish().bytes, 10_007);
    }

    #[test]
    fn corruption_reordering_and_truncation_change_it() {
        let buf = data(4096);
        let sum = |b: &[u8]| {
            let mut c = Checksum::new();
            c.update(b);
            c.finish()
        };
        let base = sum(&buf);
        let mut flipped = buf.clone();
        flipped[1234] ^= 1;
        assert_ne!(sum(&flipped), base);
        let mut swapped = buf.clone();
        swapped.swap(0, 8);
        assert_ne!(sum(&swapped), base);
        assert_ne!(sum(&buf[..4095]), base);
        let mut zero_tail = buf.clone();
        zero_tail.push(0);
        assert_ne!(sum(&zero_tail).checksum, base.checksum);
    }

    #[test]
    fn transfer_round_trips_through_text() {
        let t = Transfer {
            bytes: 42,
            checksum: 0xdead_beef,
        };
        assert_eq!(t.to_string().parse::<Transfer>(), Ok(t));
        assert!("bytes=1".parse::<Transfer>().is_err());
        assert!("bytes=x checksum=1".parse::<Transfer>().is_err());
    }
}
