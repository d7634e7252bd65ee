//! Splitting a TCP/TLS byte stream into STUN messages and ChannelData frames
//! (RFC 5766 §11.5: over streams, ChannelData is padded to four bytes).

/// Largest frame: a STUN header plus a 16-bit length, or a ChannelData header
/// plus 16-bit length plus padding.
const MAX_FRAME: usize = 20 + 0xFFFF + 3;

/// The stream carried something that is neither STUN nor ChannelData; the
/// connection should be closed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct FramingError;

#[derive(Default)]
pub(crate) struct StreamFramer {
    buf: Vec<u8>,
    start: usize,
}

impl StreamFramer {
    /// Appends bytes read from the stream.
    pub(crate) fn push(&mut self, data: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > MAX_FRAME {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame, if any; for ChannelData the slice includes
    /// the padding.
    pub(crate) fn next_frame(&mut self) -> Result<Option<&[u8]>, FramingError> {
        let rest = &self.buf[self.start..];
        if rest.len() < 4 {
            return Ok(None);
        }
        let len = u16::from_be_bytes([rest[2], rest[3]]) as usize;
        let frame_len = match rest[0] >> 6 {
            0b00 => {
                if rest.len() >= 8 && rest[4..8] != [0x21, 0x12, 0xa4, 0x42] {
                    return Err(FramingError);
                }
                20 + len
            }
            0b01 => 4 + len.div_ceil(4) * 4,
            _ => return Err(FramingError),
        };
        if rest.len() < frame_len {
            return Ok(None);
        }
        let from = self.start;
        self.start += frame_len;
        Ok(Some(&self.buf[from..from + frame_len]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_stun_and_padded_channel_data_across_reads() {
        let mut stun = vec![0x00, 0x01, 0x00, 0x04, 0x21, 0x12, 0xa4, 0x42];
        stun.extend_from_slice(&[7; 12]);
        stun.extend_from_slice(&[0x80, 0x22, 0, 0]);
        let cd = [0x40, 0x00, 0x00, 0x03, 1, 2, 3, 0];
        let mut stream = stun.clone();
        stream.extend_from_slice(&cd);

        let mut f = StreamFramer::default();
        for chunk in stream.chunks(5) {
            f.push(chunk);
        }
        assert_eq!(f.next_frame(), Ok(Some(&stun[..])));
        assert_eq!(f.next_frame(), Ok(Some(&cd[..])));
        assert_eq!(f.next_frame(), Ok(None));

        let mut g = StreamFramer::default();
        g.push(&cd[..6]);
        assert_eq!(g.next_frame(), Ok(None));
        g.push(&cd[6..]);
        assert_eq!(g.next_frame(), Ok(Some(&cd[..])));
    }

    #[test]
    fn refuses_garbage() {
        let mut f = StreamFramer::default();
        f.push(&[0xff; 8]);
        assert_eq!(f.next_frame(), Err(FramingError));
        let mut g = StreamFramer::default();
        g.push(&[0x00, 0x01, 0x00, 0x00, 1, 2, 3, 4]);
        assert_eq!(
            g.next_frame(),
            Err(FramingError),
            "STUN without magic cookie"
        );
    }
}
