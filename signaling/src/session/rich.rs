//! The session's rich-chat side: attachments on chat messages, editing and deleting one's own
//! messages, reactions (stored), and quick reactions on video tiles (broadcast only).

use tracing::warn;

use super::{now_ms, Session};
use crate::protocol::{Attachment, ChatMessage, ClientMsg, ErrorCode, ServerMsg};
use crate::richchat::{self, Refused};
use crate::SignalingError;

impl Session {
    /// The attachment for an uploaded file of this room, and the identity that uploaded it.
    pub(super) fn find_attachment(
        &self,
        id: String,
    ) -> impl std::future::Future<Output = Option<(Attachment, String)>> + Send + 'static {
        let files = self.state.inner.files.clone();
        let room = self.room().to_string();
        async move {
            tokio::task::spawn_blocking(move || files.attachment(&room, &id))
                .await
                .ok()
                .flatten()
        }
    }

    /// `chat_edit`, `chat_delete`, `react`, `tile_reaction`.
    pub(super) async fn on_rich_chat(&mut self, m: ClientMsg, rid: Option<String>) {
        if !self.claims.grants.chat {
            return self
                .conn
                .error(ErrorCode::Forbidden, "this token may not chat", rid)
                .await;
        }
        let chat = self.state.inner.chat.clone();
        let room = self.room().to_string();
        let identity = self.claims.sub.clone();
        let max = self.state.inner.config.chat_max_chars;
        let work: Box<dyn FnOnce() -> Result<Result<ChatMessage, Refused>, SignalingError> + Send> =
            match m {
                ClientMsg::TileReaction { emoji } => {
                    if !richchat::valid_emoji(&emoji) {
                        return self.bad(rid, "a reaction is one emoji").await;
                    }
                    let msg = ServerMsg::TileReaction {
                        participant_id: self.pid.to_string(),
                        emoji,
                    };
                    self.state.inner.rooms.send(self.room(), None, &msg);
                    return;
                }
                ClientMsg::React {
                    message_id,
                    emoji,
                    active,
                } => {
                    if !richchat::valid_emoji(&emoji) {
                        return self.bad(rid, "a reaction is one emoji").await;
                    }
                    Box::new(move || {
                        richchat::react(&chat, &room, &identity, message_id, &emoji, active)
                    })
                }
                ClientMsg::ChatEdit { message_id, text } => {
                    let text = crate::text::clean_chat_text(&text);
                    if text.is_empty() || text.chars().count() > max {
                        return self
                            .bad(rid, &format!("a chat message has 1 to {max} characters"))
                            .await;
                    }
                    Box::new(move || {
                        richchat::edit(&chat, &room, &identity, message_id, &text, now_ms())
                    })
                }
                ClientMsg::ChatDelete { message_id } => {
                    let files = self.state.inner.files.clone();
                    Box::new(move || {
                        Ok(richchat::delete(&chat, &room, &identity, message_id)?.map(
                            |(m, attachment)| {
                                if let Some(a) = attachment {
                                    files.remove_if_uploaded_by(&room, &a.id, &identity);
                                }
                                m
                            },
                        ))
                    })
                }
                _ => return,
            };
        match tokio::task::spawn_blocking(work).await {
            Ok(Ok(Ok(message))) => {
                let msg = ServerMsg::ChatUpdate { message };
                self.state.inner.rooms.send(self.room(), None, &msg);
            }
            Ok(Ok(Err(Refused::NotFound))) => self.bad(rid, "no such chat message").await,
            Ok(Ok(Err(Refused::TooManyEmojis))) => {
                self.bad(
                    rid,
                    "this message has as many different reactions as it may",
                )
                .await
            }
            Ok(Ok(Err(Refused::NotYours))) => {
                self.conn
                    .error(
                        ErrorCode::Forbidden,
                        "only its sender may change a message",
                        rid,
                    )
                    .await
            }
            Ok(Err(e)) => {
                warn!(error = %e, "chat change not stored");
                self.conn
                    .error(ErrorCode::Internal, "the change could not be stored", rid)
                    .await
            }
            Err(e) => {
                warn!(error = %e, "chat task failed");
                self.conn
                    .error(ErrorCode::Internal, "the change could not be stored", rid)
                    .await
            }
        }
    }

    async fn bad(&mut self, rid: Option<String>, what: &str) {
        self.conn.error(ErrorCode::BadMessage, what, rid).await
    }
}
