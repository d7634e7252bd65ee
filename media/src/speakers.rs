//! Active speaker detection from the audio-level RTP header extension (RFC 6464).
//!
//! Nothing is decoded: each audio frame's header carries the sender's own measure of its level
//! in -dBov (0 is the loudest, 127 silence). The detector keeps, per participant, the loudest
//! level of the current tick and a smoothed level across ticks; a participant counts as speaking
//! while a frame louder than [`SPEAKING_DBOV`] arrived within the last [`HOLD`]. Every
//! [`TICK`] it yields the speakers, loudest first, when the list or a rounded level changed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::ParticipantId;

/// How often the speaker list is evaluated (and at most how often it is sent).
pub const TICK: Duration = Duration::from_millis(300);
/// A participant stays a speaker this long after its last loud frame (bridges pauses between
/// words).
pub const HOLD: Duration = Duration::from_millis(900);
/// Frames at least this loud (in -dBov: smaller is louder) count as speech.
pub const SPEAKING_DBOV: u8 = 50;

/// One speaker in a [`SpeakerDetector`] update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Speaker {
    /// Who.
    pub participant: ParticipantId,
    /// Loudness in percent of full scale (10 to 100), rounded to tens.
    pub level: u8,
}

#[derive(Debug, Default)]
struct Entry {
    /// Loudest frame of the current tick, as `127 - dBov` (0 silence … 127 full scale).
    tick_max: u8,
    /// Smoothed loudness across ticks, same scale.
    smoothed: f32,
    last_loud: Option<Instant>,
}

/// The speakers of one room.
#[derive(Debug)]
pub struct SpeakerDetector {
    entries: HashMap<ParticipantId, Entry>,
    last: Vec<Speaker>,
    next_tick: Instant,
}

impl SpeakerDetector {
    /// A detector whose first tick is at `now + TICK`.
    pub fn new(now: Instant) -> Self {
        SpeakerDetector {
            entries: HashMap::new(),
            last: Vec::new(),
            next_tick: now + TICK,
        }
    }

    /// An audio frame from `participant` whose header said `audio_level` (str0m's value: the
    /// negated -dBov, so -127..=0).
    pub fn observe(&mut self, now: Instant, participant: ParticipantId, audio_level: i8) {
        let dbov = audio_level.unsigned_abs().min(127);
        let loudness = 127 - dbov;
        let e = self.entries.entry(participant).or_default();
        e.tick_max = e.tick_max.max(loudness);
        if dbov <= SPEAKING_DBOV {
            e.last_loud = Some(now);
        }
    }

    /// The participant left the room.
    pub fn remove(&mut self, participant: ParticipantId) {
        self.entries.remove(&participant);
    }

    /// When [`SpeakerDetector::poll`] wants to be called next.
    pub fn next_tick(&self) -> Instant {
        self.next_tick
    }

    /// At or after [`SpeakerDetector::next_tick`]: the new speaker list, loudest first, if it
    /// differs from the last one returned. Before the tick it returns `None`.
    pub fn poll(&mut self, now: Instant) -> Option<Vec<Speaker>> {
        if now < self.next_tick {
            return None;
        }
        self.next_tick = now + TICK;
        let mut speakers = Vec::new();
        for (pid, e) in &mut self.entries {
            e.smoothed = 0.5 * e.smoothed + 0.5 * f32::from(e.tick_max);
            e.tick_max = 0;
            let speaking = e
                .last_loud
                .is_some_and(|t| now.saturating_duration_since(t) <= HOLD);
            if speaking {
                let level = ((e.smoothed / 127.0 * 10.0).round() as u8 * 10).clamp(10, 100);
                speakers.push(Speaker {
                    participant: *pid,
                    level,
                });
            }
        }
        speakers.sort_by(|a, b| {
            b.level
                .cmp(&a.level)
                .then(a.participant.cmp(&b.participant))
        });
        if speakers == self.last {
            return None;
        }
        self.last = speakers.clone();
        Some(speakers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: ParticipantId = ParticipantId(1);
    const B: ParticipantId = ParticipantId(2);

    /// Feeds 20 ms frames for `ms` milliseconds, polling as a driver would.
    fn feed(
        d: &mut SpeakerDetector,
        now: &mut Instant,
        ms: u64,
        levels: &[(ParticipantId, i8)],
    ) -> Vec<Vec<Speaker>> {
        let mut updates = Vec::new();
        for _ in 0..ms / 20 {
            for &(p, l) in levels {
                d.observe(*now, p, l);
            }
            *now += Duration::from_millis(20);
            if let Some(u) = d.poll(*now) {
                updates.push(u);
            }
        }
        updates
    }

    #[test]
    fn the_loud_participant_is_the_speaker_and_silence_ends_it() {
        let mut now = Instant::now();
        let mut d = SpeakerDetector::new(now);
        // A talks at -20 dBov, B sends silence (-127 dBov, as a muted browser does).
        let updates = feed(&mut d, &mut now, 1000, &[(A, -20), (B, -127)]);
        let last = updates.last().expect("an update while A talks");
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].participant, A);
        assert!(last[0].level >= 60, "level {}", last[0].level);
        // Updates come at most once per tick, and only on change.
        assert!(updates.len() <= 4, "{} updates in 1 s", updates.len());

        // Both silent: after the hold, an empty list is sent once.
        let updates = feed(&mut d, &mut now, 2000, &[(A, -127), (B, -127)]);
        assert_eq!(updates.last().map(Vec::len), Some(0));
        assert_eq!(updates.iter().filter(|u| u.is_empty()).count(), 1);
    }

    #[test]
    fn the_louder_of_two_speakers_comes_first() {
        let mut now = Instant::now();
        let mut d = SpeakerDetector::new(now);
        let updates = feed(&mut d, &mut now, 1500, &[(A, -40), (B, -10)]);
        let last = updates.last().unwrap();
        assert_eq!(
            last.iter().map(|s| s.participant).collect::<Vec<_>>(),
            vec![B, A]
        );
    }

    #[test]
    fn background_noise_is_not_speech() {
        let mut now = Instant::now();
        let mut d = SpeakerDetector::new(now);
        let updates = feed(&mut d, &mut now, 2000, &[(A, -70)]);
        assert!(updates.iter().all(Vec::is_empty), "{updates:?}");
    }
}
