//! What every chat backend shares: the [`ChatBackend`] trait, the refusals of a change to a
//! message, and the rules that do not depend on where messages are kept.

use crate::protocol::{Attachment, ChatMessage, Reaction};
use crate::SignalingError;

/// Distinct emojis one message may collect.
pub(crate) const MAX_EMOJIS_PER_MESSAGE: usize = 20;

/// Why a change to a message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// No such message in this room (or it was deleted).
    NotFound,
    /// Someone else's message.
    NotYours,
    /// The message has as many distinct emojis as it may have.
    TooManyEmojis,
}

/// A chat store's operations. Blocking.
pub(crate) trait ChatBackend: Send + Sync {
    /// Whether the store answers a query.
    fn ping(&self) -> Result<(), SignalingError>;
    /// Stores `msg` (its `id` is ignored) and returns it with its id.
    fn append(&self, room: &str, msg: ChatMessage) -> Result<ChatMessage, SignalingError>;
    /// The last `limit` messages of a room, oldest first, undecorated.
    fn history(&self, room: &str, limit: usize) -> Result<Vec<ChatMessage>, SignalingError>;
    /// Records that `message_id` carries `attachment`.
    fn attach(&self, message_id: i64, attachment: &Attachment) -> Result<(), SignalingError>;
    /// Fills in the attachment, reactions and edit state of each message.
    fn decorate(&self, messages: &mut [ChatMessage]) -> Result<(), SignalingError>;
    /// Replaces the text of `identity`'s message `id`.
    fn edit(
        &self,
        room: &str,
        identity: &str,
        id: i64,
        text: &str,
        now_ms: i64,
    ) -> Result<Result<ChatMessage, Refused>, SignalingError>;
    /// Deletes `identity`'s message `id`: its text, attachment and reactions are removed.
    /// Returns the message as it is now, and the attachment it had when no other message
    /// carries it (the caller removes its file if `identity` uploaded it).
    fn delete(
        &self,
        room: &str,
        identity: &str,
        id: i64,
    ) -> Result<Result<(ChatMessage, Option<Attachment>), Refused>, SignalingError>;
    /// Adds (or removes) `identity`'s `emoji` reaction to message `id` of `room`.
    fn react(
        &self,
        room: &str,
        identity: &str,
        id: i64,
        emoji: &str,
        active: bool,
    ) -> Result<Result<ChatMessage, Refused>, SignalingError>;
}

/// Counts `identity`'s `emoji` into `reactions` (in the order emojis were first given).
pub(crate) fn add_reaction(reactions: &mut Vec<Reaction>, emoji: String, identity: String) {
    match reactions.iter_mut().find(|r| r.emoji == emoji) {
        Some(r) => {
            r.count += 1;
            r.identities.push(identity);
        }
        None => reactions.push(Reaction {
            emoji,
            count: 1,
            identities: vec![identity],
        }),
    }
}

/// `m` if it exists, is not deleted and (with `owner`) was sent by that identity.
pub(crate) fn check(m: Option<ChatMessage>, owner: Option<&str>) -> Result<ChatMessage, Refused> {
    match m {
        None => Err(Refused::NotFound),
        Some(m) if m.extra.deleted => Err(Refused::NotFound),
        Some(m) if owner.is_some_and(|o| o != m.identity) => Err(Refused::NotYours),
        Some(m) => Ok(m),
    }
}

/// Whether adding `emoji` to `m` would give it more distinct emojis than it may have.
pub(crate) fn too_many_emojis(m: &ChatMessage, emoji: &str) -> bool {
    let known = m.extra.reactions.iter().any(|r| r.emoji == emoji);
    !known && m.extra.reactions.len() >= MAX_EMOJIS_PER_MESSAGE
}

/// Whether `s` is acceptable as one reaction emoji: 1 to 32 bytes, no whitespace or control
/// characters, and not plain ASCII (so not text).
pub(crate) fn valid_emoji(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
        && !s.is_ascii()
}
