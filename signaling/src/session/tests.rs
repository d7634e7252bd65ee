//! The session core on virtual time: no runtime, no socket, no clock. Each test drives a
//! [`Sim`] (the core in a scripted world) and looks at what the client received, what the
//! session asked and did, and how it closed.

use std::time::Duration;

use super::sim::{claims, room_msg, Sim};
use super::{
    with_end_of_candidates, CloseCode, Frame, Hook, Input, MediaCmd, Metric, Output, Phase, Query,
    Refusal, RoomOp,
};
use crate::metrics::JoinFailure;
use crate::moderation::{Gate, LobbyOutcome};
use crate::protocol::{ErrorCode, LeaveAction, LeaveReason, ServerMsg};
use crate::token::TokenError;

const JOIN: &str = r#"{"type":"join","protocol":1,"token":"t","request_id":"j1"}"#;

fn error_of(m: &ServerMsg) -> Option<(ErrorCode, Option<&str>)> {
    match m {
        ServerMsg::Error {
            code, request_id, ..
        } => Some((*code, request_id.as_deref())),
        _ => None,
    }
}

fn asked(sim: &Sim, f: impl Fn(&Query) -> bool) -> bool {
    sim.log.iter().any(|o| matches!(o, Output::Ask(q) if f(q)))
}

#[test]
fn a_join_verifies_the_token_passes_the_door_and_answers_joined() {
    let mut sim = Sim::new(Sim::limits());
    sim.world.others = 2;
    sim.client(JOIN);
    assert_eq!(sim.s.phase(), Phase::Joined);
    let sent = sim.take_sent();
    let [ServerMsg::Joined {
        room,
        participant_id,
        participants,
        resume_token,
        ..
    }] = &sent[..]
    else {
        panic!("{sent:?}")
    };
    assert_eq!(room, "standup");
    assert_eq!(participant_id, &huddle_media::ParticipantId(7).to_string());
    assert_eq!(participants.len(), 2);
    assert_eq!(resume_token.len(), 32);
    // The whole join path, in order.
    let asks: Vec<&str> = sim
        .log
        .iter()
        .filter_map(|o| match o {
            Output::Ask(Query::Token(_)) => Some("token"),
            Output::Ask(Query::Admission { .. }) => Some("admission"),
            Output::Ask(Query::Gate { .. }) => Some("gate"),
            Output::Ask(Query::Enter { .. }) => Some("enter"),
            _ => None,
        })
        .collect();
    assert_eq!(asks, ["token", "admission", "gate", "enter"]);
    assert!(sim
        .log
        .iter()
        .any(|o| matches!(o, Output::Webhook(Hook::Joined))));
    assert!(
        !sim.log
            .iter()
            .any(|o| matches!(o, Output::Webhook(Hook::RoomStarted))),
        "the room was already open"
    );
    assert!(sim
        .log
        .iter()
        .any(|o| matches!(o, Output::Metric(Metric::Joined))));
    assert!(sim.closed.is_none());
}

#[test]
fn messages_before_join_are_refused_and_the_join_timeout_closes_with_policy() {
    let mut sim = Sim::new(Sim::limits());
    sim.client(r#"{"type":"chat","text":"hi","request_id":"c"}"#);
    let sent = sim.take_sent();
    assert_eq!(
        sent.iter().filter_map(error_of).collect::<Vec<_>>(),
        [(ErrorCode::NotJoined, Some("c"))]
    );
    sim.advance(Duration::from_millis(9_999));
    assert!(sim.closed.is_none());
    sim.advance(Duration::from_millis(1));
    assert_eq!(sim.closed, Some(CloseCode::Policy));
    assert!(sim
        .log
        .iter()
        .any(|o| matches!(o, Output::Metric(Metric::JoinFailed(JoinFailure::Timeout)))));
}

#[test]
fn a_join_with_another_protocol_or_a_bad_token_is_refused_with_its_request_id() {
    let mut sim = Sim::new(Sim::limits());
    sim.client(r#"{"type":"join","protocol":2,"token":"t","request_id":"p"}"#);
    assert_eq!(
        error_of(&sim.sent[0]),
        Some((ErrorCode::UnsupportedProtocol, Some("p")))
    );
    assert_eq!(sim.closed, Some(CloseCode::Normal));
    assert!(!asked(&sim, |q| matches!(q, Query::Token(_))));

    let mut sim = Sim::new(Sim::limits());
    sim.world.token = Err(TokenError::Expired);
    sim.client(JOIN);
    assert_eq!(
        error_of(&sim.sent[0]),
        Some((ErrorCode::TokenExpired, Some("j1")))
    );
    assert_eq!(sim.closed, Some(CloseCode::Normal));
}

#[test]
fn a_token_for_another_room_than_the_url_names_is_refused() {
    let mut sim = Sim::new(Sim::limits());
    sim.s = super::Session::new(
        Sim::limits(),
        huddle_media::ParticipantId(7),
        Some("other".into()),
        sim.now,
    );
    sim.client(JOIN);
    assert_eq!(
        error_of(&sim.sent[0]),
        Some((ErrorCode::WrongRoom, Some("j1")))
    );
    assert_eq!(sim.closed, Some(CloseCode::Normal));
    assert!(!asked(&sim, |q| matches!(q, Query::Gate { .. })));

    let mut sim = Sim::new(Sim::limits());
    sim.world.token = Ok(claims("alice", "no spaces allowed"));
    sim.client(JOIN);
    assert_eq!(
        error_of(&sim.sent[0]).map(|e| e.0),
        Some(ErrorCode::WrongRoom)
    );
}

#[test]
fn passwords_are_checked_at_the_door_and_a_refusal_carries_the_join_request_id() {
    for (code, text) in [
        (ErrorCode::PasswordRequired, "this room needs a password"),
        (ErrorCode::WrongPassword, "wrong room password"),
        (ErrorCode::RoomLocked, "the host has locked this room"),
    ] {
        let mut sim = Sim::new(Sim::limits());
        sim.world.gate = Gate::Refused(code, text);
        sim.client(r#"{"type":"join","protocol":1,"token":"t","password":"x","request_id":"j1"}"#);
        assert!(asked(&sim, |q| matches!(
            q,
            Query::Gate { password: Some(p), admin: false, .. } if p == "x"
        )));
        assert_eq!(error_of(&sim.sent[0]), Some((code, Some("j1"))));
        assert_eq!(sim.closed, Some(CloseCode::Normal));
        assert!(!asked(&sim, |q| matches!(q, Query::Enter { .. })));
    }
}

#[test]
fn a_lobby_room_knocks_waits_answers_pings_and_enters_when_admitted() {
    let mut sim = Sim::new(Sim::limits());
    sim.world.gate = Gate::Lobby;
    sim.client(JOIN);
    assert_eq!(sim.s.phase(), Phase::Lobby);
    assert_eq!(sim.take_sent(), [ServerMsg::Lobby {}]);
    assert!(sim
        .log
        .iter()
        .any(|o| matches!(o, Output::Room(RoomOp::Knock))));
    sim.client(r#"{"type":"chat","text":"let me in","request_id":"c"}"#);
    assert_eq!(sim.errors(), [ErrorCode::NotJoined]);
    sim.client(r#"{"type":"ping","ts":5}"#);
    assert_eq!(
        sim.take_sent(),
        [ServerMsg::Pong {
            ts: serde_json::json!(5)
        }]
    );
    // Pings keep the wait alive past the idle timeout.
    for _ in 0..4 {
        sim.advance(Duration::from_secs(10));
        sim.input(Input::Frame(Frame::Control));
    }
    assert!(sim.log.iter().any(|o| matches!(o, Output::Ping)));
    assert_eq!(sim.s.phase(), Phase::Lobby);
    sim.input(Input::Lobby(LobbyOutcome::Admitted));
    assert_eq!(sim.s.phase(), Phase::Joined);
    assert!(matches!(
        sim.take_sent()[..],
        [ServerMsg::Joined { lobby: true, .. }]
    ));
}

#[test]
fn a_denied_knock_is_told_to_leave_and_a_silent_or_leaving_one_is_cancelled() {
    let mut sim = Sim::new(Sim::limits());
    sim.world.gate = Gate::Lobby;
    sim.client(JOIN);
    sim.take_sent();
    sim.input(Input::Lobby(LobbyOutcome::Denied));
    assert_eq!(sim.take_sent(), [ServerMsg::leave(LeaveReason::Denied)]);
    assert_eq!(sim.closed, Some(CloseCode::Normal));

    let mut sim = Sim::new(Sim::limits());
    sim.world.gate = Gate::Lobby;
    sim.client(JOIN);
    sim.advance(Duration::from_secs(15));
    assert!(sim
        .log
        .iter()
        .any(|o| matches!(o, Output::Room(RoomOp::CancelKnock))));
    assert_eq!(sim.closed, Some(CloseCode::Normal));

    let mut sim = Sim::new(Sim::limits());
    sim.world.gate = Gate::Lobby;
    sim.client(JOIN);
    sim.client(r#"{"type":"leave"}"#);
    assert!(sim
        .log
        .iter()
        .any(|o| matches!(o, Output::Room(RoomOp::CancelKnock))));
    assert!(sim.closed.is_some());
}

#[test]
fn a_full_room_and_a_full_node_refuse_the_join() {
    let mut sim = Sim::new(Sim::limits());
    sim.world.refusal = Some(Refusal::Full(3));
    sim.client(JOIN);
    let ServerMsg::Error {
        code,
        message,
        request_id,
    } = &sim.sent[0]
    else {
        panic!("{:?}", sim.sent)
    };
    assert_eq!(
        (*code, message.as_str(), request_id.as_deref()),
        (
            ErrorCode::RoomFull,
            "the room is full (3 participants)",
            Some("j1")
        )
    );
    assert_eq!(sim.closed, Some(CloseCode::Normal));
    assert!(sim.log.iter().any(|o| matches!(
        o,
        Output::Metric(Metric::Limit(crate::limits::Limit::Participants))
    )));

    let mut sim = Sim::new(Sim::limits());
    sim.world.refusal = Some(Refusal::TooManyRooms(1000));
    sim.client(JOIN);
    assert_eq!(sim.errors(), [ErrorCode::TooManyRooms]);
    assert!(sim.closed.is_some());
}

#[test]
fn a_draining_node_sends_its_leave_and_a_cluster_redirects() {
    let mut sim = Sim::new(Sim::limits());
    sim.world.elsewhere = Some(true);
    sim.client(JOIN);
    assert!(matches!(
        sim.sent[..],
        [ServerMsg::Leave {
            action: LeaveAction::Reconnect,
            ..
        }]
    ));
    assert_eq!(sim.closed, Some(CloseCode::Restart));

    let mut sim = Sim::new(Sim::limits());
    sim.world.elsewhere = Some(false);
    sim.client(JOIN);
    assert!(
        matches!(&sim.sent[..], [ServerMsg::Redirect { url, room }]
            if url == "https://node2.example.org" && room == "standup"),
        "{:?}",
        sim.sent
    );
    assert_eq!(sim.closed, Some(CloseCode::Normal));
    assert!(!asked(&sim, |q| matches!(q, Query::Gate { .. })));
}

#[test]
fn a_resume_hands_the_socket_over_and_a_failed_one_may_still_join() {
    let resume =
        r#"{"type":"resume","protocol":1,"token":"t","resume_token":"x","request_id":"r"}"#;
    let mut sim = Sim::new(Sim::limits());
    sim.world.resume_found = true;
    sim.client(resume);
    assert!(sim.handed_over);
    assert!(sim.sent.is_empty());

    let mut sim = Sim::new(Sim::limits());
    sim.client(resume);
    assert_eq!(
        error_of(&sim.sent[0]),
        Some((ErrorCode::ResumeFailed, Some("r")))
    );
    assert_eq!(sim.s.phase(), Phase::Handshake);
    sim.take_sent();
    sim.client(JOIN);
    assert_eq!(sim.s.phase(), Phase::Joined);
}

#[test]
fn a_lost_socket_waits_for_resume_keeping_messages_and_resumes_in_order() {
    let mut sim = Sim::joined(Sim::limits());
    sim.input(Input::Frame(Frame::Lost));
    assert!(matches!(sim.s.phase(), Phase::Detached { .. }));
    assert!(!sim.s.reading());
    let hand = |raised| ServerMsg::Hand {
        participant_id: "9".into(),
        raised,
    };
    sim.input(Input::Room(room_msg(&hand(true))));
    sim.input(Input::Room(room_msg(&hand(false))));
    assert!(sim.sent.is_empty(), "kept, not sent");
    sim.advance(Duration::from_secs(19));
    sim.input(Input::Reattached {
        participants: Vec::new(),
    });
    assert_eq!(sim.s.phase(), Phase::Joined);
    let sent = sim.take_sent();
    assert!(matches!(sent[0], ServerMsg::Resumed { .. }), "{sent:?}");
    assert_eq!(sent[1..], [hand(true), hand(false)]);
    assert!(sim.closed.is_none());
}

#[test]
fn a_send_that_fails_detaches_and_keeps_the_message() {
    let mut sim = Sim::joined(Sim::limits());
    sim.world.socket_up = false;
    sim.client(r#"{"type":"ping","ts":1}"#);
    assert!(matches!(sim.s.phase(), Phase::Detached { .. }));
    sim.world.socket_up = true;
    sim.input(Input::Reattached {
        participants: Vec::new(),
    });
    let sent = sim.take_sent();
    assert!(matches!(
        sent[..],
        [ServerMsg::Resumed { .. }, ServerMsg::Pong { .. }]
    ));
}

#[test]
fn the_resume_window_ends_a_lost_session_and_a_zero_window_ends_it_at_once() {
    let mut sim = Sim::joined(Sim::limits());
    sim.input(Input::Frame(Frame::Lost));
    sim.advance(Duration::from_millis(19_999));
    assert!(sim.closed.is_none());
    sim.advance(Duration::from_millis(1));
    assert!(asked(&sim, |q| matches!(
        q,
        Query::Leave {
            reason: LeaveReason::Disconnected
        }
    )));
    assert!(sim
        .log
        .iter()
        .any(|o| matches!(o, Output::Media(MediaCmd::Remove))));
    assert!(sim.closed.is_some());

    let mut limits = Sim::limits();
    limits.resume_window = Duration::ZERO;
    let mut sim = Sim::joined(limits);
    sim.input(Input::Frame(Frame::Close));
    assert!(sim.closed.is_some());
    assert!(sim
        .log
        .iter()
        .any(|o| matches!(o, Output::Webhook(Hook::Left(LeaveReason::Disconnected)))));
}

#[test]
fn the_backlog_of_an_absent_client_is_bounded() {
    let mut sim = Sim::joined(Sim::limits());
    sim.input(Input::Frame(Frame::Lost));
    for i in 0..super::MAX_BACKLOG {
        sim.input(Input::Room(room_msg(&ServerMsg::Typing {
            participant_id: i.to_string(),
            active: true,
        })));
    }
    assert!(sim.closed.is_none());
    sim.input(Input::Room(room_msg(&ServerMsg::Typing {
        participant_id: "x".into(),
        active: true,
    })));
    assert!(sim.closed.is_some());
}

#[test]
fn silence_ends_a_joined_session_and_pings_go_out_on_their_period() {
    let mut sim = Sim::joined(Sim::limits());
    sim.advance(Duration::from_secs(5));
    let pings = |sim: &Sim| sim.log.iter().filter(|o| matches!(o, Output::Ping)).count();
    assert_eq!(pings(&sim), 1);
    sim.advance(Duration::from_secs(5));
    assert_eq!(pings(&sim), 2);
    assert!(sim.closed.is_none());
    sim.advance(Duration::from_secs(5));
    assert_eq!(
        sim.take_sent(),
        [ServerMsg::leave(LeaveReason::Disconnected)]
    );
    assert_eq!(sim.closed, Some(CloseCode::Normal));
}

#[test]
fn a_room_leave_ends_the_session_with_its_close_code() {
    let mut sim = Sim::joined(Sim::limits());
    sim.input(Input::Room(room_msg(&ServerMsg::leave_to_reconnect())));
    assert_eq!(sim.take_sent(), [ServerMsg::leave_to_reconnect()]);
    assert_eq!(sim.closed, Some(CloseCode::Restart));
    assert!(asked(&sim, |q| matches!(
        q,
        Query::Leave {
            reason: LeaveReason::ServerShutdown
        }
    )));
}

#[test]
fn over_the_message_rate_messages_are_dropped_then_the_connection_closes() {
    let mut limits = Sim::limits();
    limits.messages_per_sec = 2;
    limits.message_burst = 2;
    limits.rate_limit_strikes = 2;
    let mut sim = Sim::new(limits);
    sim.client(JOIN);
    sim.take_sent();
    sim.client(r#"{"type":"ping","ts":1}"#);
    sim.client(r#"{"type":"ping","ts":2,"request_id":"over"}"#);
    let sent = sim.take_sent();
    assert_eq!(
        sent.iter().filter_map(error_of).collect::<Vec<_>>(),
        [(ErrorCode::RateLimited, Some("over"))],
        "{sent:?}"
    );
    // Within the same second: dropped without another word.
    sim.client(r#"{"type":"ping","ts":3}"#);
    assert!(sim.take_sent().is_empty());
    sim.advance(Duration::from_millis(1000));
    for _ in 0..3 {
        sim.client(r#"{"type":"ping","ts":4}"#);
    }
    assert!(sim.errors().contains(&ErrorCode::RateLimited));
    assert_eq!(sim.closed, Some(CloseCode::Policy));
    assert!(asked(&sim, |q| matches!(
        q,
        Query::Leave {
            reason: LeaveReason::Removed
        }
    )));
}

#[test]
fn sizes_are_limited_and_a_frame_over_the_hard_cap_closes_at_once() {
    let mut limits = Sim::limits();
    limits.max_message_bytes = 100;
    limits.max_sdp_bytes = 400;
    let mut sim = Sim::new(limits);
    sim.client(JOIN);
    sim.take_sent();
    let long = format!(
        r#"{{"type":"chat","text":"{}","request_id":"big"}}"#,
        "a".repeat(200)
    );
    sim.client(&long);
    assert_eq!(
        sim.sent.iter().filter_map(error_of).collect::<Vec<_>>(),
        [(ErrorCode::MessageTooLarge, Some("big"))]
    );
    sim.take_sent();
    // An answer may be larger.
    let answer = format!(r#"{{"type":"answer","sdp":"{}"}}"#, "v".repeat(300));
    sim.client(&answer);
    assert!(sim.errors().is_empty());
    sim.input(Input::Frame(Frame::OverCap));
    assert_eq!(sim.errors(), [ErrorCode::MessageTooLarge]);
    assert_eq!(sim.closed, Some(CloseCode::TooBig));
}

#[test]
fn chat_is_rate_limited_and_checked_before_it_is_stored() {
    let mut sim = Sim::joined(Sim::limits());
    sim.client(r#"{"type":"chat","text":"   ","request_id":"e"}"#);
    assert_eq!(sim.errors(), [ErrorCode::BadMessage]);
    for i in 0..4 {
        sim.client(&format!(
            r#"{{"type":"chat","text":"m{i}","client_msg_id":"c{i}"}}"#
        ));
    }
    let echoes = sim
        .take_sent()
        .into_iter()
        .filter(|m| {
            matches!(
                m,
                ServerMsg::Chat {
                    client_msg_id: Some(_),
                    ..
                }
            )
        })
        .count();
    assert_eq!(echoes, 4);
    // The burst is 5 (the blank message took one): the sixth in the same instant is refused.
    sim.client(r#"{"type":"chat","text":"six","request_id":"r6"}"#);
    let sent = sim.take_sent();
    assert_eq!(
        sent.iter().filter_map(error_of).collect::<Vec<_>>(),
        [(ErrorCode::RateLimited, Some("r6"))]
    );
    // 30 a minute: one more token two seconds later.
    sim.advance(Duration::from_secs(2));
    sim.client(r#"{"type":"chat","text":"later"}"#);
    assert!(sim.errors().is_empty());
    // Others got the messages through the room.
    let broadcasts = sim
        .log
        .iter()
        .filter(|o| {
            matches!(
                o,
                Output::Room(RoomOp::Broadcast {
                    msg: ServerMsg::Chat { .. },
                    include_self: false,
                    ..
                })
            )
        })
        .count();
    assert_eq!(broadcasts, 5);
}

#[test]
fn media_refusals_reach_the_client_with_the_request_id_of_what_was_refused() {
    let mut sim = Sim::joined(Sim::limits());
    sim.client("{\"type\":\"offer\",\"sdp\":\"v=0\\r\\n\",\"request_id\":\"o1\"}");
    assert!(asked(&sim, |q| matches!(
        q,
        Query::Media(MediaCmd::Offer { .. })
    )));
    sim.input(Input::Media(huddle_media::PeerEvent::Error {
        refusal: huddle_media::Refusal::Offer,
        message: "Parse error at PointerOffset(0x7f00)".into(),
    }));
    let sent = sim.take_sent();
    let [ServerMsg::Error {
        code,
        message,
        request_id,
    }] = &sent[..]
    else {
        panic!("{sent:?}")
    };
    assert_eq!(*code, ErrorCode::InvalidSdp);
    assert_eq!(request_id.as_deref(), Some("o1"));
    assert!(!message.contains("0x7f"), "no internals: {message}");
    // The offer was refused: a corrected one is taken.
    sim.client("{\"type\":\"offer\",\"sdp\":\"v=0\\r\\n\"}");
    assert!(sim.errors().is_empty());
}

#[test]
fn video_sizes_name_tracks_by_their_wire_ids_and_are_clamped() {
    let mut sim = Sim::joined(Sim::limits());
    sim.client(
        r#"{"type":"video_sizes","tracks":[{"track_id":"TR_1f","width":640,"height":360},
            {"track_id":"bogus","width":1,"height":1},
            {"track_id":"TR_2","width":99999,"height":0}]}"#,
    );
    let sizes = sim.log.iter().find_map(|o| match o {
        Output::Media(MediaCmd::VideoSizes(s)) => Some(s.clone()),
        _ => None,
    });
    assert_eq!(
        sizes,
        Some(vec![
            (huddle_media::TrackId(0x1f), 640, 360),
            (huddle_media::TrackId(2), 16_384, 0)
        ])
    );
}

#[test]
fn a_token_without_publish_may_not_offer_media() {
    let mut sim = Sim::new(Sim::limits());
    let mut c = claims("viewer", "standup");
    c.grants.publish = false;
    sim.world.token = Ok(c);
    sim.client(JOIN);
    sim.take_sent();
    sim.client(
        "{\"type\":\"offer\",\"sdp\":\"v=0\\r\\nm=audio 9 X 0\\r\\na=sendrecv\\r\\n\",\"request_id\":\"o\"}",
    );
    assert_eq!(
        sim.sent.iter().filter_map(error_of).collect::<Vec<_>>(),
        [(ErrorCode::Forbidden, Some("o"))]
    );
}

#[test]
fn the_close_code_follows_the_leave() {
    let code = |m: &ServerMsg| CloseCode::after(m).code();
    assert_eq!(code(&ServerMsg::leave_to_reconnect()), 1012);
    assert_eq!(code(&ServerMsg::leave(LeaveReason::ServerShutdown)), 1001);
    assert_eq!(code(&ServerMsg::leave(LeaveReason::Removed)), 1000);
    assert_eq!(code(&ServerMsg::leave(LeaveReason::RoomEnded)), 1000);
}

#[test]
fn end_of_candidates_follows_the_last_candidate_of_each_section_that_has_any() {
    let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
               a=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host\r\na=rtpmap:111 opus/48000/2\r\n\
               m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\n";
    let out = with_end_of_candidates(sdp.to_string());
    assert_eq!(
        out,
        "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
         a=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host\r\na=end-of-candidates\r\n\
         a=rtpmap:111 opus/48000/2\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\n"
    );
    // At the very end, and never twice.
    let last = "m=audio 9 X 0\r\na=candidate:1 1 udp 1 127.0.0.1 1 typ host";
    let once = with_end_of_candidates(last.to_string());
    assert!(
        once.ends_with("typ host\r\na=end-of-candidates\r\n"),
        "{once:?}"
    );
    assert_eq!(with_end_of_candidates(once.clone()), once);
    assert_eq!(with_end_of_candidates("v=0\r\n".into()), "v=0\r\n");
}

#[test]
fn fuzz_seeds_run_whole_sessions() {
    // The fuzz target's entry point on a few scripts (the committed corpus does more).
    super::sim::fuzz(&[]);
    super::sim::fuzz(&[0, 0, 0, 0, 23, 8, 40, 10, 0, 23, 11, 14, 1, 8, 200]);
    super::sim::fuzz(&[0x10, 0, 0, 13, 0, 0, 10, 12, 1]);
    super::sim::fuzz(&[0x80, 0, 0, 7, 4]);
}
