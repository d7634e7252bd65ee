//! `--record`: the room API's recording calls (Huddle only).

use std::time::Duration;

use anyhow::{bail, Context, Result};

fn client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?)
}

/// Starts recording every room.
pub async fn start(url: String, token: String, rooms: Vec<String>) -> Result<()> {
    let http = client()?;
    for room in rooms {
        let res = http
            .post(format!("{url}/api/rooms/{room}/recording"))
            .bearer_auth(&token)
            .send()
            .await
            .context("POST /api/rooms/{room}/recording")?;
        if res.status().as_u16() != 201 {
            bail!(
                "recording {room}: {} {}",
                res.status(),
                res.text().await.unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// Stops every room's recording (if the meeting's end has not already) and waits (up to 20 s) for them to be ready: the bytes of their
/// files.
pub async fn stop(url: String, token: String, rooms: Vec<String>) -> Result<u64> {
    let http = client()?;
    let mut total = 0;
    for room in rooms {
        let res = http
            .delete(format!("{url}/api/rooms/{room}/recording"))
            .bearer_auth(&token)
            .send()
            .await?;
        // 404: it already stopped, with the meeting (the participants leave on the stop
        // signal, and a recording ends when its room does).
        if !res.status().is_success() && res.status().as_u16() != 404 {
            bail!("stopping the recording of {room}: {}", res.status());
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let list: serde_json::Value = http
                .get(format!("{url}/api/rooms/{room}/recordings"))
                .bearer_auth(&token)
                .send()
                .await?
                .json()
                .await?;
            let rec = &list["recordings"][0];
            if rec["state"] == "ready" {
                total += rec["files"]
                    .as_array()
                    .map(|fs| fs.iter().filter_map(|f| f["bytes"].as_u64()).sum::<u64>())
                    .unwrap_or(0);
                break;
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the recording of {room} was not ready within 20 s: {list}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(total)
}
