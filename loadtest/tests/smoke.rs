//! The load tester against the real server: a short audio run must join everyone, deliver media
//! with no real loss, and measure join time and the server's cost.

use std::time::Duration;

mod common;
use common::start_server;

#[test]
fn an_audio_run_with_two_publishers_and_two_listeners_delivers_everything() {
    let server = start_server(&[]);
    let report = server.data_dir.join("report.json");
    let started = std::time::Instant::now();
    let out = server
        .tester(&report)
        .args([
            "--scenario",
            "audio",
            "--publishers",
            "2",
            "--subscribers",
            "2",
        ])
        .args(["--duration", "5", "--warmup", "1"])
        .arg("--server-pid")
        .arg(server.child.id().to_string())
        .output()
        .expect("the load tester runs");
    assert!(
        out.status.success(),
        "load tester failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "the run is bounded"
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("server CPU"), "summary table:\n{table}");

    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).expect("report written")).unwrap();
    let s = &r["summary"];
    assert_eq!(s["participants"], 4, "{s}");
    assert_eq!(s["failed"], 0, "{s}");
    assert_eq!(s["joined"], 4, "{s}");
    // Two listeners, each receiving both publishers (publishers do not subscribe).
    assert_eq!(s["tracks"], 4, "{s}");
    assert!(s["received_packets"].as_u64().unwrap() > 0, "{s}");
    assert!(s["loss_pct"].as_f64().unwrap() < 5.0, "{s}");
    assert!(s["e2e_loss_pct"].as_f64().unwrap() < 5.0, "{s}");
    let join = &s["join_ms"];
    assert_eq!(join["count"], 2, "both listeners measured a join time: {s}");
    assert!(join["p50"].as_f64().unwrap() > 0.0, "{s}");
    assert!(s["latency_audio"]["count"].as_u64().unwrap() > 0, "{s}");
    assert!(s["server"]["rss_mib"].as_f64().unwrap() > 0.0, "{s}");
}

#[test]
fn simulcast_viewers_with_small_medium_and_large_tiles_get_three_layers() {
    let server = start_server(&[]);
    let report = server.data_dir.join("report-mix.json");
    let out = server
        .tester(&report)
        .args(["--scenario", "livestream", "--subscribers", "3"])
        .args(["--simulcast", "3", "--video-kbps", "400"])
        .args(["--subscriber-mix", "small,medium,large"])
        .args(["--duration", "8", "--warmup", "2"])
        .output()
        .expect("the load tester runs");
    assert!(
        out.status.success(),
        "load tester failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).expect("report written")).unwrap();
    let s = &r["summary"];
    assert_eq!(s["joined"], 4, "{s}");
    let classes = s["tile_classes"].as_array().expect("tile classes");
    let kbps: Vec<f64> = ["small", "medium", "large"]
        .iter()
        .map(|c| {
            let class = classes
                .iter()
                .find(|x| x["class"] == *c)
                .unwrap_or_else(|| panic!("class {c} in {s}"));
            assert_eq!(class["subscribers"], 1, "{class}");
            class["video_kbps_per_track"].as_f64().unwrap()
        })
        .collect();
    // The layers are sent at 1/16, 1/4 and all of 400 kbit/s: each class gets at least twice
    // the one below (some slack for key frames and a late layer switch).
    assert!(kbps[0] > 5.0, "small tiles get video: {kbps:?}");
    assert!(kbps[1] > 2.0 * kbps[0], "medium > 2x small: {kbps:?}");
    assert!(kbps[2] > 2.0 * kbps[1], "large > 2x medium: {kbps:?}");
}

#[test]
fn whep_viewers_of_a_meeting_all_connect_receive_media_and_delete_their_resource() {
    let server = start_server(&[]);
    let report = server.data_dir.join("report-whep.json");
    let out = server
        .tester(&report)
        .args(["--scenario", "meeting", "--participants", "2"])
        .args(["--video-kbps", "200", "--whep-viewers", "3"])
        .args(["--duration", "8", "--warmup", "2"])
        .output()
        .expect("the load tester runs");
    assert!(
        out.status.success(),
        "load tester failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("WHEP viewers"), "summary table:\n{table}");
    assert!(
        table.contains("whep: 3 of 3 viewer resources deleted"),
        "{table}"
    );
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).expect("report written")).unwrap();
    let s = &r["summary"];
    assert_eq!(s["joined"], 2, "{s}");
    assert_eq!(s["whep_viewers"], 3, "{s}");
    assert_eq!(s["whep_viewers_connected"], 3, "{s}");
    assert_eq!(s["whep_viewers_failed"], 0, "{s}");
    assert_eq!(s["whep_viewers_deleted"], 3, "{s}");
    // Every viewer gets the two participants' audio (50 packets/s each) and a speaker's video.
    assert!(
        s["whep_min_packets_per_viewer"].as_u64().unwrap() > 100,
        "{s}"
    );
    assert!(
        s["whep_video_kbps_per_viewer"].as_f64().unwrap() > 20.0,
        "{s}"
    );
    let viewers = r["viewers"].as_array().expect("viewers");
    assert!(
        viewers
            .iter()
            .all(|v| v["video_packets"].as_u64().unwrap() > 0),
        "{viewers:?}"
    );
}
