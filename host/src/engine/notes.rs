//! What the host notes during one sandboxed call for the call's result:
//! why it refused the guest something (a file outside its grants, a
//! connection to a host it may not reach). A guest may turn a refusal into
//! a vague error of its own; these notes say what really happened.
//!
//! A hostile guest can be refused in a loop, so a call keeps only a few
//! notes, and a repeat of one already kept is not kept again.

use std::sync::{Arc, Mutex};

/// One kind of note of one call, shared by the objects that note it (the
/// file guard's refusals, with the streams it opened; the denied
/// connections, with the HTTP hooks and the socket check): at most `MAX`,
/// no two the same.
#[derive(Debug, Default, Clone)]
pub struct CallNotes<const MAX: usize>(Arc<Mutex<Vec<String>>>);

impl<const MAX: usize> CallNotes<MAX> {
    /// Keep `message`, unless `MAX` notes are kept already or it is one
    /// of them.
    pub fn note(&self, message: String) {
        let mut notes = crate::sync::lock(&self.0);
        if notes.len() < MAX && !notes.contains(&message) {
            notes.push(message);
        }
    }

    /// The notes kept so far, cleared.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *crate::sync::lock(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::CallNotes;

    #[test]
    fn a_call_keeps_at_most_max_notes_and_no_repeats() {
        let notes = CallNotes::<3>::default();
        let shared = notes.clone();
        for _ in 0..100 {
            shared.note("denied: a".to_owned());
        }
        for message in ["denied: b", "denied: c", "denied: d"] {
            notes.note(message.to_owned());
        }
        assert_eq!(notes.take(), ["denied: a", "denied: b", "denied: c"]);
        assert!(shared.take().is_empty(), "take clears the shared list");
        shared.note("denied: e".to_owned());
        assert_eq!(notes.take(), ["denied: e"]);
    }
}
