//! A session on virtual time in a scripted world: the unit tests and the fuzz target drive the
//! core through [`Sim`] instead of the WebSocket driver. The [`World`] answers every
//! [`Query`] the way its fields say; time moves only with [`Sim::advance`].

use std::time::{Duration, Instant};

use huddle_media::ParticipantId;

use super::{
    Admission, CloseCode, Entered, Frame, Input, Limits, Output, Query, Refusal, Reply, Session,
};
use crate::moderation::{Gate, LobbyOutcome};
use crate::protocol::{ChatExtra, ChatMessage, ErrorCode, Grants, LeaveReason, ServerMsg};
use crate::token::{Claims, TokenError};

/// How the scripted world answers.
#[derive(Debug, Clone)]
pub(crate) struct World {
    /// What every token verifies to.
    pub(crate) token: Result<Claims, TokenError>,
    /// `None`: the node takes the room; `Some(true)`: it drains; `Some(false)`: the room lives
    /// on another node.
    pub(crate) elsewhere: Option<bool>,
    /// The door.
    pub(crate) gate: Gate,
    /// The room registry refuses.
    pub(crate) refusal: Option<Refusal>,
    /// How many others are in the room.
    pub(crate) others: usize,
    /// A `resume` finds its session.
    pub(crate) resume_found: bool,
    /// The socket takes frames.
    pub(crate) socket_up: bool,
    next_message_id: i64,
}

impl Default for World {
    fn default() -> Self {
        World {
            token: Ok(claims("alice", "standup")),
            elsewhere: None,
            gate: Gate::Open,
            refusal: None,
            others: 0,
            resume_found: false,
            socket_up: true,
            next_message_id: 1,
        }
    }
}

/// A token's claims for `identity` in `room`, with the default grants.
pub(crate) fn claims(identity: &str, room: &str) -> Claims {
    Claims {
        sub: identity.to_string(),
        name: identity.to_uppercase(),
        room: room.to_string(),
        exp: 0,
        iat: 0,
        grants: Grants::default(),
    }
}

/// A session, its world, and everything that came out of it.
pub(crate) struct Sim {
    pub(crate) s: Session,
    pub(crate) now: Instant,
    pub(crate) world: World,
    /// Messages the client received.
    pub(crate) sent: Vec<ServerMsg>,
    /// Everything else the session did (room ops, media commands, webhooks, metrics, pings),
    /// and the questions it asked.
    pub(crate) log: Vec<Output>,
    /// The Close code, once closed.
    pub(crate) closed: Option<CloseCode>,
    /// The socket went to the session it resumes.
    pub(crate) handed_over: bool,
}

impl Sim {
    pub(crate) fn new(limits: Limits) -> Self {
        let now = Instant::now();
        Sim {
            s: Session::new(limits, ParticipantId(7), None, now),
            now,
            world: World::default(),
            sent: Vec::new(),
            log: Vec::new(),
            closed: None,
            handed_over: false,
        }
    }

    /// The default limits (those of [`crate::SignalingConfig::default`]).
    pub(crate) fn limits() -> Limits {
        Limits::from_config(&crate::SignalingConfig::default())
    }

    /// A text frame from the client.
    pub(crate) fn client(&mut self, text: &str) {
        self.input(Input::Frame(Frame::Text(text.to_string())));
    }

    pub(crate) fn input(&mut self, i: Input) {
        self.s.handle(self.now, i);
        self.drive();
    }

    /// Moves virtual time forward by `d`, firing every timeout on the way.
    pub(crate) fn advance(&mut self, d: Duration) {
        let until = self.now + d;
        while let Some(t) = self.s.poll_timeout() {
            if t > until {
                break;
            }
            self.now = self.now.max(t);
            self.s.handle_timeout(self.now);
            self.drive();
            let next = self.s.poll_timeout();
            assert!(
                next.is_none_or(|n| n > self.now),
                "a timeout that does not move: {next:?} at {:?}",
                self.now
            );
        }
        self.now = until;
    }

    /// Takes the messages received so far.
    #[cfg(test)]
    pub(crate) fn take_sent(&mut self) -> Vec<ServerMsg> {
        std::mem::take(&mut self.sent)
    }

    /// The codes of the errors received so far (and forgets them).
    #[cfg(test)]
    pub(crate) fn errors(&mut self) -> Vec<ErrorCode> {
        self.take_sent()
            .into_iter()
            .filter_map(|m| match m {
                ServerMsg::Error { code, .. } => Some(code),
                _ => None,
            })
            .collect()
    }

    /// Joins with the default world: `joined` received, phase `Joined`.
    #[cfg(test)]
    pub(crate) fn joined(limits: Limits) -> Self {
        let mut sim = Sim::new(limits);
        sim.client(r#"{"type":"join","protocol":1,"token":"t","request_id":"j"}"#);
        assert_eq!(sim.s.phase(), super::Phase::Joined, "{:?}", sim.sent);
        sim.take_sent();
        sim.log.clear();
        sim
    }

    fn drive(&mut self) {
        while let Some(out) = self.s.poll_output() {
            assert!(
                self.closed.is_none() && !self.handed_over,
                "output after the end: {out:?}"
            );
            match out {
                Output::Send(o) => {
                    if self.world.socket_up {
                        let m = match o {
                            super::Outgoing::Msg(m) => *m,
                            super::Outgoing::Shared(s) => serde_json::from_str(s.text.as_str())
                                .expect("a shared message is a server message"),
                        };
                        if matches!(m, ServerMsg::Joined { .. }) {
                            assert!(
                                !self
                                    .sent
                                    .iter()
                                    .any(|s| matches!(s, ServerMsg::Joined { .. })),
                                "joined twice"
                            );
                        }
                        self.sent.push(m);
                    } else {
                        self.s.handle(self.now, Input::Unsent(o));
                    }
                }
                Output::Ping if !self.world.socket_up => {
                    self.s.handle(self.now, Input::Frame(Frame::Lost));
                }
                Output::Ask(q) => {
                    let reply = self.answer(&q);
                    self.log.push(Output::Ask(q));
                    self.s.handle(self.now, Input::Reply(reply));
                }
                Output::Close(code) => self.closed = Some(code),
                Output::HandOver => self.handed_over = true,
                o => self.log.push(o),
            }
        }
        if self.closed.is_some() || self.handed_over {
            assert!(self.s.is_over(), "ended but not over");
            assert!(!self.s.reading());
        }
    }

    fn answer(&mut self, q: &Query) -> Reply {
        let w = &mut self.world;
        match q {
            Query::Token(_) => Reply::Token(w.token.clone()),
            Query::Admission { room } => Reply::Admission(match w.elsewhere {
                None => Admission::Open,
                Some(true) => Admission::Draining(ServerMsg::leave_to_reconnect()),
                Some(false) => Admission::Elsewhere(ServerMsg::Redirect {
                    url: "https://node2.example.org".into(),
                    room: room.clone(),
                }),
            }),
            Query::Gate { .. } => Reply::Gate(w.gate),
            Query::Enter { claims } => Reply::Entered(match w.refusal {
                Some(r) => Err(r),
                None => Ok(Entered {
                    others: (0..w.others)
                        .map(|i| crate::protocol::ParticipantInfo {
                            participant_id: format!("{}", 100 + i),
                            identity: format!("other{i}"),
                            name: format!("Other {i}"),
                            audio_muted: false,
                            video_muted: false,
                            tracks: Vec::new(),
                            hand_raised: false,
                            screen_sharing: false,
                            host: false,
                        })
                        .collect(),
                    host: claims.grants.admin,
                    lobby: matches!(w.gate, Gate::Lobby),
                    locked: false,
                    spotlight: None,
                    recording: false,
                    history: Vec::new(),
                    ice_servers: Vec::new(),
                    resume_token: "r".repeat(32),
                    knocks: Vec::new(),
                }),
            }),
            Query::Resume { .. } => Reply::ResumeFound(w.resume_found),
            Query::Attachment { .. } => Reply::Attachment(None),
            Query::Store(op) => {
                let id = w.next_message_id;
                w.next_message_id += 1;
                let text = match op {
                    super::StoreOp::Append { text, .. } | super::StoreOp::Edit { text, .. } => {
                        text.clone()
                    }
                    _ => String::new(),
                };
                Reply::Stored(Ok(Ok(ChatMessage {
                    id,
                    participant_id: "7".into(),
                    identity: "alice".into(),
                    name: "ALICE".into(),
                    text,
                    ts: 0,
                    extra: ChatExtra::default(),
                })))
            }
            Query::Host { .. } => Reply::Replies(Vec::new()),
            Query::Media(_) => Reply::Media(Ok(())),
            Query::Leave { .. } => Reply::Left {
                member: true,
                closed: w.others == 0,
            },
        }
    }
}

/// A room message as the registry sends it.
pub(crate) fn room_msg(m: &ServerMsg) -> super::RoomMsg {
    super::RoomMsg::new(m).expect("serializes")
}

/// Reads bytes as a script: the world first, then one input per step.
struct Script<'a> {
    data: &'a [u8],
}

impl Script<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (b, rest) = self.data.split_first()?;
        self.data = rest;
        Some(*b)
    }

    fn text(&mut self) -> String {
        let n = usize::from(self.byte().unwrap_or(0));
        let n = n.min(self.data.len());
        let (t, rest) = self.data.split_at(n);
        self.data = rest;
        String::from_utf8_lossy(t).into_owned()
    }
}

/// Client messages the fuzzer picks from (and mutates through their parameters).
const MESSAGES: &[&str] = &[
    r#"{"type":"join","protocol":1,"token":"t","request_id":"a"}"#,
    r#"{"type":"join","protocol":1,"token":"t","password":"pw"}"#,
    r#"{"type":"join","protocol":2,"token":"t"}"#,
    r#"{"type":"resume","protocol":1,"token":"t","resume_token":"rrrr"}"#,
    "{\"type\":\"offer\",\"sdp\":\"v=0\\r\\nm=audio 9 UDP 111\\r\\na=sendrecv\\r\\n\"}",
    r#"{"type":"answer","sdp":"v=0"}"#,
    r#"{"type":"candidate","candidate":"candidate:1 1 udp 1 127.0.0.1 9 typ host"}"#,
    r#"{"type":"video_sizes","tracks":[{"track_id":"1","width":640,"height":360}]}"#,
    r#"{"type":"screen","sharing":true}"#,
    r#"{"type":"mute","kind":"audio","muted":false}"#,
    r#"{"type":"chat","text":"hello","client_msg_id":"c1"}"#,
    r#"{"type":"chat","text":"","attachment_id":"f1"}"#,
    r#"{"type":"chat_edit","message_id":1,"text":"edited"}"#,
    r#"{"type":"chat_delete","message_id":1}"#,
    r#"{"type":"react","message_id":1,"emoji":"👍"}"#,
    r#"{"type":"tile_reaction","emoji":"🎉"}"#,
    r#"{"type":"hand","raised":true}"#,
    r#"{"type":"typing"}"#,
    r#"{"type":"admit","participant_id":"9"}"#,
    r#"{"type":"moderate","participant_id":"9","action":"remove"}"#,
    r#"{"type":"room_settings","lobby":true}"#,
    r#"{"type":"end_room"}"#,
    r#"{"type":"invite"}"#,
    r#"{"type":"ping","ts":1}"#,
    r#"{"type":"leave"}"#,
];

/// The fuzz target `session`: a whole session driven by `data`. Panics when an invariant
/// breaks: an output after the end, `joined` twice, a timeout that does not move time on.
pub(crate) fn fuzz(data: &[u8]) {
    let mut script = Script { data };
    let mut limits = Sim::limits();
    let w = script.byte().unwrap_or(0);
    if w & 0x80 != 0 {
        limits.resume_window = Duration::ZERO;
    }
    let mut sim = Sim::new(limits);
    sim.world.token = match w & 3 {
        0 | 1 => Ok(claims("alice", "standup")),
        2 => Err(TokenError::Expired),
        _ => Ok(claims("alice", "bad room!")),
    };
    sim.world.elsewhere = match (w >> 2) & 3 {
        1 => Some(true),
        2 => Some(false),
        _ => None,
    };
    sim.world.gate = match (w >> 4) & 3 {
        0 => Gate::Open,
        1 => Gate::Lobby,
        2 => Gate::Refused(ErrorCode::WrongPassword, "wrong room password"),
        _ => Gate::Open,
    };
    sim.world.resume_found = w & 0x40 != 0;
    while let Some(op) = script.byte() {
        if sim.closed.is_some() || sim.handed_over {
            break;
        }
        match op % 16 {
            0..=5 => {
                let i = usize::from(script.byte().unwrap_or(0)) % MESSAGES.len();
                sim.client(MESSAGES[i]);
            }
            6 => {
                let t = script.text();
                sim.client(&t);
            }
            7 => {
                let f = match script.byte().unwrap_or(0) % 5 {
                    0 => Frame::Binary,
                    1 => Frame::Control,
                    2 => Frame::Close,
                    3 => Frame::OverCap,
                    _ => Frame::Lost,
                };
                sim.input(Input::Frame(f));
            }
            8 | 9 => {
                let ms = u64::from(script.byte().unwrap_or(0)) * 250;
                sim.advance(Duration::from_millis(ms));
            }
            10 => sim.world.socket_up = !sim.world.socket_up,
            11 => {
                sim.world.socket_up = true;
                sim.input(Input::Reattached {
                    participants: Vec::new(),
                });
            }
            12 => {
                let m = match script.byte().unwrap_or(0) % 3 {
                    0 => ServerMsg::leave(LeaveReason::Removed),
                    1 => ServerMsg::leave_to_reconnect(),
                    _ => ServerMsg::Hand {
                        participant_id: "9".into(),
                        raised: true,
                    },
                };
                sim.input(Input::Room(room_msg(&m)));
            }
            13 => {
                let d = match script.byte().unwrap_or(0) % 3 {
                    0 => LobbyOutcome::Admitted,
                    1 => LobbyOutcome::Denied,
                    _ => LobbyOutcome::RoomEnded,
                };
                sim.input(Input::Lobby(d));
            }
            14 => {
                let ev = match script.byte().unwrap_or(0) % 4 {
                    0 => huddle_media::PeerEvent::Answer {
                        sdp: "v=0\r\na=candidate:1 1 udp 1 127.0.0.1 9 typ host\r\n".into(),
                    },
                    1 => huddle_media::PeerEvent::Connected,
                    2 => huddle_media::PeerEvent::Error {
                        refusal: huddle_media::Refusal::Offer,
                        message: "parse error".into(),
                    },
                    _ => huddle_media::PeerEvent::Closed {
                        reason: huddle_media::CloseReason::ConnectTimeout,
                    },
                };
                sim.input(Input::Media(ev));
            }
            _ => {
                let t = script.text();
                sim.client(&format!(r#"{{"type":"chat","text":{t:?}}}"#));
            }
        }
    }
    // However it went, the session ends within the longest of its timers.
    sim.advance(Duration::from_secs(120));
    sim.world.socket_up = false;
    sim.advance(Duration::from_secs(120));
    assert!(
        sim.closed.is_some() || sim.handed_over,
        "the session never ended: {:?}",
        sim.s.phase()
    );
}
