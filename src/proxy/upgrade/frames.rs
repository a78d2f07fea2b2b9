//! [`Frames`]: where WebSocket frames begin and end in one direction of a relayed
//! connection (RFC 6455 §5.2), so that moat can put a close frame of its own between two
//! frames when the process stops, and see the peer's close frame.
//!
//! Only frame headers are read (2 to 14 bytes each); payloads are skipped by their
//! length, never buffered. Masked (client-to-server) and unmasked frames alike. A length
//! the RFC forbids (64-bit with the top bit set) loses the track: no frame boundary is
//! reported from then on.

/// The close status moat sends when the process stops: 1001, "going away".
pub const GOING_AWAY: u16 = 1001;
/// The reason sent with [`GOING_AWAY`].
const REASON: &[u8] = b"going away";
/// Opcode of a close frame.
const CLOSE: u8 = 0x8;

/// A complete close frame (FIN, opcode 8) carrying [`GOING_AWAY`] and its reason:
/// masked with `mask` toward a server (RFC 6455 §5.3: every client frame is masked),
/// unmasked toward a client.
pub fn going_away(mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut payload = GOING_AWAY.to_be_bytes().to_vec();
    payload.extend_from_slice(REASON);
    frame(CLOSE, &payload, mask)
}

/// A whole frame (FIN set) with `opcode` and `payload`, masked with `mask` if given.
pub fn frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(0x80 | opcode);
    let masked = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => frame.push(masked | n as u8),
        n @ 126..=65535 => {
            frame.push(masked | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(masked | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            frame.extend_from_slice(&key);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => frame.extend_from_slice(payload),
    }
    frame
}

/// The frame structure of one direction's byte stream (see the module docs).
#[derive(Debug, Default)]
pub struct Frames {
    /// The current frame header's bytes so far (up to 14).
    head: [u8; 14],
    /// How many of `head` are filled (0: between frames, or inside a payload).
    have: usize,
    /// Payload bytes of the current frame still to come.
    left: u64,
    /// The track was lost (see the module docs).
    lost: bool,
    /// A close frame began in this stream.
    closed: bool,
}

impl Frames {
    /// Whether the bytes seen so far end exactly at a frame's end.
    pub fn at_boundary(&self) -> bool {
        !self.lost && self.have == 0 && self.left == 0
    }

    /// Whether a close frame was seen in this stream (the sender is closing).
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// Account for `data`, the next bytes of the stream; returns how many were taken:
    /// all of them, or with `to_boundary`, only up to the first frame end (0 when already
    /// at one). Once the track is lost, everything is taken.
    pub fn advance(&mut self, data: &[u8], to_boundary: bool) -> usize {
        if to_boundary && self.at_boundary() {
            return 0;
        }
        let mut i = 0;
        while i < data.len() && !self.lost {
            if self.left > 0 {
                let take = self.left.min((data.len() - i) as u64);
                i += take as usize;
                self.left -= take;
                if self.left == 0 && to_boundary {
                    return i;
                }
                continue;
            }
            self.head[self.have] = data[i];
            self.have += 1;
            i += 1;
            if let Some(len) = self.header_done() {
                self.have = 0;
                self.left = len;
                if len == 0 && to_boundary {
                    return i;
                }
            }
        }
        data.len()
    }

    /// The payload length once `head[..have]` is a whole header.
    fn header_done(&mut self) -> Option<u64> {
        let h = &self.head[..self.have];
        if h.len() < 2 {
            return None;
        }
        let masked = h[1] & 0x80 != 0;
        let (ext, len7) = match h[1] & 0x7f {
            126 => (2, None),
            127 => (8, None),
            n => (0, Some(u64::from(n))),
        };
        if h.len() < 2 + ext + if masked { 4 } else { 0 } {
            return None;
        }
        let len = match len7 {
            Some(n) => n,
            None => h[2..2 + ext]
                .iter()
                .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)),
        };
        if ext == 8 && len >> 63 != 0 {
            self.lost = true;
            return None;
        }
        if h[0] & 0x0f == CLOSE {
            self.closed = true;
        }
        Some(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame with `opcode`, `len` payload bytes of `b'x'`, masked or not.
    fn frame_of(opcode: u8, len: usize, masked: bool) -> Vec<u8> {
        frame(opcode, &vec![b'x'; len], masked.then_some([1, 2, 3, 4]))
    }

    #[test]
    fn boundaries_are_found_whatever_the_reads() {
        for masked in [false, true] {
            let frames = [
                frame_of(1, 5, masked),
                frame_of(2, 300, masked),
                frame_of(2, 70_000, masked),
                frame_of(9, 0, masked),
            ];
            let stream: Vec<u8> = frames.concat();
            let ends: Vec<usize> = frames
                .iter()
                .scan(0, |at, f| {
                    *at += f.len();
                    Some(*at)
                })
                .collect();
            for step in [1, 3, 7, 64, 4096, stream.len()] {
                // Taking everything: at a boundary exactly after each frame's last byte.
                let mut f = Frames::default();
                let mut at = 0;
                for piece in stream.chunks(step) {
                    assert_eq!(f.advance(piece, false), piece.len());
                    at += piece.len();
                    assert_eq!(f.at_boundary(), ends.contains(&at), "step {step} at {at}");
                }
                // Stopping at boundaries: every stop is a frame end, and none is missed.
                let mut f = Frames::default();
                let (mut at, mut stops) = (0, Vec::new());
                for piece in stream.chunks(step) {
                    let mut rest = piece;
                    while !rest.is_empty() {
                        let n = f.advance(rest, true);
                        if n == 0 {
                            // At a boundary already: take one byte to move on.
                            let n = f.advance(&rest[..1], false);
                            at += n;
                            rest = &rest[n..];
                            continue;
                        }
                        at += n;
                        rest = &rest[n..];
                        if f.at_boundary() {
                            stops.push(at);
                        }
                    }
                }
                assert_eq!(stops, ends, "step {step}");
            }
        }
    }

    #[test]
    fn close_frames_are_seen_and_built() {
        let mut f = Frames::default();
        f.advance(&frame_of(1, 3, true), false);
        assert!(!f.closed());
        let ours = going_away(Some([7, 7, 7, 7]));
        f.advance(&ours, false);
        assert!(f.closed() && f.at_boundary());
        let plain = going_away(None);
        assert_eq!(&plain[..4], &[0x88, 12, 0x03, 0xe9]);
        assert_eq!(&plain[4..], b"going away");
        let unmasked: Vec<u8> = ours[6..].iter().map(|b| b ^ 7).collect();
        assert_eq!(&unmasked[..], &plain[2..]);
    }

    #[test]
    fn a_forbidden_length_loses_the_track() {
        let mut f = Frames::default();
        let mut bad = vec![0x82, 127];
        bad.extend_from_slice(&u64::MAX.to_be_bytes());
        f.advance(&bad, false);
        assert!(!f.at_boundary());
        assert_eq!(f.advance(b"anything", true), 8);
        assert!(!f.at_boundary());
    }
}
