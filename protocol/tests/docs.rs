//! docs/protocol.md against the types: every message type in its two message tables is a
//! variant of `ClientMsg` / `ServerMsg` and the other way round, each with exactly the fields
//! the table lists; the error-code table is `ErrorCode`; the **LeaveReason** and
//! **LeaveAction** lines are those enums. The variants and fields are read from this crate's
//! source (as tests/config_docs.rs reads the configuration's), and every documented name is
//! also checked through serde, so that a `rename` cannot make the two agree by accident.

use std::collections::{BTreeMap, BTreeSet};

use huddle_protocol::{ClientMsg, ErrorCode, LeaveAction, LeaveReason, ServerMsg};

const DOCS: &str = include_str!("../../docs/protocol.md");
const SOURCE: &str = include_str!("../src/lib.rs");

type Messages = BTreeMap<String, BTreeSet<String>>;

/// The lines of the section under `## heading`, up to the next `## `.
fn section(heading: &str) -> Vec<&'static str> {
    let start = DOCS
        .find(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("docs/protocol.md has no section \"## {heading}\""));
    DOCS[start + 1..]
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("## "))
        .collect()
}

/// The cells of a table row.
fn cells(row: &str) -> Vec<&str> {
    row.trim()
        .trim_matches('|')
        .split('|')
        .map(str::trim)
        .collect()
}

/// The backticked names outside parentheses in a cell (`a` (…), `b?` (…) → a, b).
fn top_level_names(cell: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let (mut depth, mut in_tick, mut word) = (0i32, false, String::new());
    for c in cell.chars() {
        match c {
            '`' if in_tick => {
                in_tick = false;
                let name = word.trim_end_matches('?');
                let plain =
                    !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_');
                if depth == 0 && plain {
                    names.insert(name.to_string());
                }
                word.clear();
            }
            '`' => in_tick = true,
            _ if in_tick => word.push(c),
            '(' => depth += 1,
            ')' => depth -= 1,
            _ => {}
        }
    }
    names
}

/// A message table: type → its fields.
fn doc_messages(heading: &str) -> Messages {
    let mut out = Messages::new();
    for row in section(heading)
        .into_iter()
        .filter(|l| l.starts_with("| `"))
    {
        let c = cells(row);
        let ty = c[0].trim_matches('`').to_string();
        let fields = if c[1] == "—" {
            BTreeSet::new()
        } else {
            top_level_names(c[1])
        };
        assert!(
            out.insert(ty.clone(), fields).is_none(),
            "{ty} documented twice"
        );
    }
    out
}

fn snake(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The body of `pub enum NAME { … }` in the source.
fn enum_body(name: &str) -> &'static str {
    let start = SOURCE
        .find(&format!("pub enum {name} {{"))
        .unwrap_or_else(|| panic!("no enum {name} in protocol/src/lib.rs"));
    let end = SOURCE[start..].find("\n}\n").expect("enum end") + start;
    &SOURCE[start..end]
}

/// An enum's variants (snake_case) with their fields, as declared.
fn source_variants(name: &str) -> Messages {
    let mut out = Messages::new();
    let mut current: Option<String> = None;
    for line in enum_body(name).lines().skip(1) {
        let variant = line
            .strip_prefix("    ")
            .filter(|l| l.starts_with(|c: char| c.is_ascii_uppercase()));
        if let Some(v) = variant {
            let ident: String = v.chars().take_while(|c| c.is_alphanumeric()).collect();
            out.insert(snake(&ident), BTreeSet::new());
            current = Some(snake(&ident));
        } else if let Some(field) = line.strip_prefix("        ") {
            let field = field.trim_start_matches("pub ");
            if let (Some(cur), Some((name, _))) = (&current, field.split_once(": ")) {
                if !name.starts_with(['/', '#'])
                    && name.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                {
                    out.get_mut(cur)
                        .expect("current variant")
                        .insert(name.to_string());
                }
            }
        }
    }
    out
}

fn same(what: &str, docs: &Messages, types: &Messages) {
    let (d, t): (BTreeSet<_>, BTreeSet<_>) = (docs.keys().collect(), types.keys().collect());
    assert_eq!(
        d.difference(&t).collect::<Vec<_>>(),
        Vec::<&&String>::new(),
        "{what}: documented but not in the types"
    );
    assert_eq!(
        t.difference(&d).collect::<Vec<_>>(),
        Vec::<&&String>::new(),
        "{what}: in the types but not documented"
    );
    for (ty, fields) in types {
        assert_eq!(
            &docs[ty], fields,
            "{what} `{ty}`: documented fields vs the type's"
        );
    }
}

/// A tag serde knows: decoding `{"type": tag}` fails, if at all, for a missing field, never
/// for an unknown variant.
fn known_tag<T: serde::de::DeserializeOwned>(tag: &str) -> bool {
    match serde_json::from_value::<T>(serde_json::json!({ "type": tag })) {
        Ok(_) => true,
        Err(e) => !e.to_string().contains("unknown variant"),
    }
}

#[test]
fn the_message_tables_are_the_message_types() {
    let client = doc_messages("Client → server messages");
    assert!(
        client.len() >= 19 && client["join"].contains("token"),
        "{client:?}"
    );
    same("client message", &client, &source_variants("ClientMsg"));
    for ty in client.keys() {
        assert!(
            known_tag::<ClientMsg>(ty),
            "serde does not know client message `{ty}`"
        );
    }
    let server = doc_messages("Server → client messages");
    assert!(
        server.len() >= 25 && server["leave"].len() == 3,
        "{server:?}"
    );
    same("server message", &server, &source_variants("ServerMsg"));
    for ty in server.keys() {
        assert!(
            known_tag::<ServerMsg>(ty),
            "serde does not know server message `{ty}`"
        );
    }
}

/// The quoted values of a `**Name**: "a" (…), "b" …` line.
fn doc_values(name: &str) -> BTreeSet<String> {
    let start = DOCS
        .find(&format!("\n**{name}**: "))
        .unwrap_or_else(|| panic!("docs/protocol.md has no **{name}** line"));
    let para = DOCS[start + 1..].split("\n\n").next().expect("paragraph");
    let mut out = BTreeSet::new();
    let mut rest = para;
    while let Some(i) = rest.find("`\"") {
        let after = &rest[i + 2..];
        let end = after.find("\"`").expect("closing quote");
        out.insert(after[..end].to_string());
        rest = &after[end..];
    }
    out
}

fn unit_variants(name: &str) -> BTreeSet<String> {
    source_variants(name).into_keys().collect()
}

#[test]
fn error_codes_and_leave_reasons_and_actions_are_the_enums() {
    let codes: BTreeSet<String> = section("Error codes")
        .into_iter()
        .filter(|l| l.starts_with("| `"))
        .map(|l| cells(l)[0].trim_matches('`').to_string())
        .collect();
    assert_eq!(
        codes,
        unit_variants("ErrorCode"),
        "the error-code table vs ErrorCode"
    );
    for c in &codes {
        serde_json::from_value::<ErrorCode>(serde_json::json!(c))
            .unwrap_or_else(|e| panic!("error code `{c}`: {e}"));
    }
    let reasons = doc_values("LeaveReason");
    assert_eq!(
        reasons,
        unit_variants("LeaveReason"),
        "**LeaveReason** vs LeaveReason"
    );
    for r in &reasons {
        serde_json::from_value::<LeaveReason>(serde_json::json!(r))
            .unwrap_or_else(|e| panic!("leave reason `{r}`: {e}"));
    }
    let actions = doc_values("LeaveAction");
    assert_eq!(
        actions,
        unit_variants("LeaveAction"),
        "**LeaveAction** vs LeaveAction"
    );
    for a in &actions {
        serde_json::from_value::<LeaveAction>(serde_json::json!(a))
            .unwrap_or_else(|e| panic!("leave action `{a}`: {e}"));
    }
}
