//! Which simulcast layer each subscriber gets: pure functions, no state.
//!
//! A subscriber's video consumers share its downlink. [`allocate`] first sets aside what its
//! audio needs (audio is never paused), then gives every wanted video its lowest layer
//! (screen shares first), pausing the videos that do not fit, then raises videos one layer at a
//! time, round robin, while the budget allows and up to each one's cap (the layer that fits the
//! size at which the subscriber shows it, see [`layer_for_size`]).
//!
//! When the budget is only an estimate, one video is never paused for lack of it: the first
//! screen share, or else the video shown largest, keeps its lowest layer. A downlink estimate
//! below one low layer (some 50 to 150 kbit/s) comes far more often from random loss or jitter
//! fooling the estimator than from a link that cannot carry it, and a frozen picture of the
//! person talking is worse than a late one (Chrome's own sender does not suspend video
//! either). An explicit cap ([`crate::Sfu::set_max_bitrate`]) is obeyed to the letter.

/// Where a published track comes from (camera, microphone, screen): the protocol's type.
pub use huddle_protocol::Source;

/// One video consumer's wish, for [`allocate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Want {
    /// Bitrate of each available layer, lowest first, in bits per second, already cut at the
    /// layer the subscriber's tile needs. Empty: the consumer wants nothing (hidden tile).
    pub bitrates: Vec<u64>,
    /// Served before the others (screen shares).
    pub priority: bool,
}

/// For each want, the index of the layer it gets, or `None` (paused). `budget` is the
/// subscriber's downlink in bits per second; `audio` what its audio consumers take. With
/// `keep_one` (the budget is an estimate, not a cap), one video keeps its lowest layer even
/// when it does not fit (see the module's documentation).
pub fn allocate(budget: u64, audio: u64, wants: &[Want], keep_one: bool) -> Vec<Option<usize>> {
    let mut left = budget.saturating_sub(audio);
    let mut out = vec![None; wants.len()];
    let mut order: Vec<usize> = (0..wants.len()).collect();
    // Screen shares first, then the videos shown largest (the most layers wanted).
    order.sort_by_key(|&i| {
        (
            !wants[i].priority,
            std::cmp::Reverse(wants[i].bitrates.last().copied().unwrap_or(0)),
        )
    });
    for &i in &order {
        if let Some(&low) = wants[i].bitrates.first() {
            if low <= left {
                left -= low;
                out[i] = Some(0);
            }
        }
    }
    if keep_one && out.iter().all(Option::is_none) {
        if let Some(&i) = order.iter().find(|&&i| !wants[i].bitrates.is_empty()) {
            out[i] = Some(0);
            left = 0;
        }
    }
    loop {
        let mut raised = false;
        for &i in &order {
            let Some(cur) = out[i] else { continue };
            let rates = &wants[i].bitrates;
            if cur + 1 >= rates.len() {
                continue;
            }
            let extra = rates[cur + 1].saturating_sub(rates[cur]);
            if extra <= left {
                left -= extra;
                out[i] = Some(cur + 1);
                raised = true;
            }
        }
        if !raised {
            return out;
        }
    }
}

/// The lowest of `widths_heights` (layers lowest first; `(0, 0)` for an unknown size) that
/// covers a tile of `tile` device pixels, allowing 10 % upscaling; the top layer when none
/// does. Unknown sizes are taken as halving from one layer to the next below a top layer of
/// 1280x720.
pub fn layer_for_size(widths_heights: &[(u32, u32)], tile: (u32, u32)) -> usize {
    let n = widths_heights.len();
    if n == 0 {
        return 0;
    }
    for (i, &(w, h)) in widths_heights.iter().enumerate() {
        let (w, h) = if w == 0 || h == 0 {
            let shift = (n - 1 - i).min(8) as u32;
            (1280 >> shift, 720 >> shift)
        } else {
            (w, h)
        };
        if w * 10 >= tile.0 * 9 && h * 10 >= tile.1 * 9 {
            return i;
        }
    }
    n - 1
}

/// The frame size in a VP8 keyframe's header (RFC 6386 9.1), without decoding anything.
pub fn vp8_keyframe_size(frame: &[u8]) -> Option<(u32, u32)> {
    if frame.len() < 10 || frame[0] & 1 != 0 || frame[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let w = u32::from(u16::from_le_bytes([frame[6], frame[7]]) & 0x3fff);
    let h = u32::from(u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff);
    (w > 0 && h > 0).then_some((w, h))
}

/// A participant's connection quality, as shown on its tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Quality {
    /// Loss under 2 %, jitter under 30 ms, round trip under 300 ms.
    Good,
    /// Loss under 8 %, jitter under 60 ms, round trip under 600 ms.
    Fair,
    /// Worse.
    Poor,
}

impl Quality {
    /// `"good"`, `"fair"` or `"poor"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Quality::Good => "good",
            Quality::Fair => "fair",
            Quality::Poor => "poor",
        }
    }

    /// Classifies a connection by its worst loss fraction (either direction, audio and video),
    /// the jitter of what it sends us (seconds, in audio terms: video jitter is weighed against
    /// video's norm first, see `note_jitter`) and its round trip time (seconds).
    pub fn classify(loss: f32, jitter: f64, rtt: f64) -> Quality {
        if loss >= 0.08 || jitter >= 0.060 || rtt >= 0.600 {
            Quality::Poor
        } else if loss >= 0.02 || jitter >= 0.030 || rtt >= 0.300 {
            Quality::Fair
        } else {
            Quality::Good
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want(b: &[u64]) -> Want {
        Want {
            bitrates: b.to_vec(),
            priority: false,
        }
    }

    #[test]
    fn plenty_of_bandwidth_gives_every_video_its_cap() {
        let got = allocate(
            10_000_000,
            100_000,
            &[want(&[150_000, 500_000, 1_500_000]), want(&[150_000])],
            false,
        );
        assert_eq!(got, vec![Some(2), Some(0)]);
    }

    #[test]
    fn a_weak_link_lowers_layers_then_pauses_video_but_keeps_audio() {
        let w = [
            want(&[150_000, 500_000, 1_500_000]),
            want(&[150_000, 500_000, 1_500_000]),
        ];
        assert_eq!(
            allocate(1_000_000, 100_000, &w, false),
            vec![Some(1), Some(0)]
        );
        assert_eq!(
            allocate(450_000, 100_000, &w, false),
            vec![Some(0), Some(0)]
        );
        assert_eq!(allocate(300_000, 100_000, &w, false), vec![Some(0), None]);
        // Less than audio needs: every video paused; audio is not ours to pause.
        assert_eq!(allocate(50_000, 100_000, &w, false), vec![None, None]);
    }

    #[test]
    fn an_estimate_below_every_layer_still_leaves_the_largest_video_its_lowest_layer() {
        let w = [
            want(&[150_000, 500_000]),
            want(&[150_000, 500_000, 1_500_000]),
            want(&[]),
        ];
        assert_eq!(
            allocate(50_000, 100_000, &w, true),
            vec![None, Some(0), None]
        );
        // A screen share comes first.
        let mut screen = want(&[800_000]);
        screen.priority = true;
        let w2 = [want(&[150_000, 500_000, 1_500_000]), screen];
        assert_eq!(allocate(100_000, 40_000, &w2, true), vec![None, Some(0)]);
        // Nothing is forced once something fits, and nothing for hidden tiles alone.
        assert_eq!(
            allocate(300_000, 100_000, &w, true),
            vec![None, Some(0), None]
        );
        assert_eq!(allocate(0, 0, &[want(&[])], true), vec![None]);
    }

    #[test]
    fn screen_shares_are_served_first_and_hidden_tiles_get_nothing() {
        let mut screen = want(&[800_000]);
        screen.priority = true;
        let w = [want(&[150_000, 500_000]), screen, want(&[])];
        assert_eq!(allocate(900_000, 0, &w, false), vec![None, Some(0), None]);
    }

    #[test]
    fn the_layer_that_covers_the_tile_is_chosen() {
        let layers = [(160, 120), (320, 240), (640, 480)];
        assert_eq!(layer_for_size(&layers, (150, 100)), 0);
        assert_eq!(layer_for_size(&layers, (300, 225)), 1);
        assert_eq!(layer_for_size(&layers, (1920, 1080)), 2);
        assert_eq!(layer_for_size(&[(0, 0), (0, 0), (0, 0)], (300, 170)), 0);
        assert_eq!(layer_for_size(&[(0, 0), (0, 0)], (600, 340)), 0);
        assert_eq!(layer_for_size(&[(0, 0), (0, 0)], (800, 450)), 1);
    }

    #[test]
    fn vp8_keyframe_sizes_are_read_from_the_header() {
        let key = [
            0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01, 0,
        ];
        assert_eq!(vp8_keyframe_size(&key), Some((640, 480)));
        let mut inter = key;
        inter[0] |= 1;
        assert_eq!(vp8_keyframe_size(&inter), None);
        assert_eq!(vp8_keyframe_size(&[0; 3]), None);
    }

    #[test]
    fn quality_classes() {
        assert_eq!(Quality::classify(0.0, 0.005, 0.02), Quality::Good);
        assert_eq!(Quality::classify(0.03, 0.005, 0.02), Quality::Fair);
        assert_eq!(Quality::classify(0.0, 0.005, 0.7), Quality::Poor);
    }
}
