//! The milters' modifications, made on what is relayed without rewriting the spool file:
//! header fields added, inserted, changed and deleted as an overlay over the spool's header
//! section ([`HeaderList`], sans I/O), and a replaced body written to a second spool file
//! ([`ReplacementBody`], through the spool's budget). [`edited`] puts them together into the
//! [`Relayed`] message the relay streams and the DKIM signer signs.
//!
//! Index semantics are libmilter's (`smfi_insheader`, `smfi_chgheader`) over the fields the
//! milter was sent — mtac's `Received` first, then the sender's: an insert at index N goes
//! before the Nth field (0: at the top, past the end: at the end of the section); a change
//! names the Nth field of that name (from 1, case-insensitive), an empty value deletes it, and a
//! change of a field that is not there adds it (as Sendmail does). Each edit sees the list as
//! the edits before it left it, milter after milter in policy order.

use super::client::Edit;
use super::header_line;
use crate::relayed::{Piece, Relayed};
use crate::spool::{Spool, SpoolFile};

/// The most header fields a message may have for a milter to edit them (each costs a few dozen
/// bytes of index while the overlay is built).
pub const MAX_FIELDS: usize = 10_000;
/// Header names longer than this are never a milter's target (the index keeps this much).
const MAX_NAME: usize = 256;

/// Why the milters' modifications could not be made: the message is deferred (451), never
/// relayed without them.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("a header field that is no valid field: {0:?}")]
    InvalidField(String),
    #[error("more than {MAX_FIELDS} header fields to index")]
    TooManyFields,
    #[error("the replacement body is larger than {0} bytes")]
    TooLarge(u64),
    #[error("the spool: {0}")]
    Spool(std::io::Error),
}

impl EditError {
    /// The storage ran out (a 452 with the spool's rule), rather than an edit mtac refuses.
    pub fn is_storage(&self) -> bool {
        matches!(self, EditError::Spool(e) if crate::spool::is_full(e))
    }
}

/// One header field of the edited section: its name (lower case, for matching) and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Field {
    name: Vec<u8>,
    piece: Piece,
}

/// The header section as edited so far: the spool's fields (as ranges) and new ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderList {
    fields: Vec<Field>,
}

impl HeaderList {
    /// A spooled field named `name` at `start..end` of the spool file.
    pub fn push_spooled(&mut self, name: &[u8], start: u64, end: u64) -> Result<(), EditError> {
        if self.fields.len() >= MAX_FIELDS {
            return Err(EditError::TooManyFields);
        }
        let name = name.iter().take(MAX_NAME).map(u8::to_ascii_lowercase).collect();
        self.fields.push(Field { name, piece: Piece::Spool { file: 0, start, end } });
        Ok(())
    }

    /// Make one header edit (others are not this list's: `Ok(false)`).
    pub fn apply(&mut self, edit: &Edit) -> Result<bool, EditError> {
        let field = |name: &str, value: &str| {
            let line = header_line(name, value).ok_or_else(|| EditError::InvalidField(name.to_owned()))?;
            Ok::<_, EditError>(Field { name: name.to_ascii_lowercase().into_bytes(), piece: Piece::Bytes(line.into()) })
        };
        if self.fields.len() >= MAX_FIELDS {
            return Err(EditError::TooManyFields);
        }
        match edit {
            Edit::AddHeader { name, value } => self.fields.push(field(name, value)?),
            Edit::InsertHeader { index, name, value } => {
                let at = usize::try_from(*index).unwrap_or(usize::MAX).min(self.fields.len());
                self.fields.insert(at, field(name, value)?);
            }
            Edit::ChangeHeader { index, name, value } => {
                let wanted = name.to_ascii_lowercase().into_bytes();
                // libmilter counts from 1; Sendmail takes 0 as 1.
                let nth = usize::try_from(*index).unwrap_or(usize::MAX).max(1);
                let found =
                    self.fields.iter().enumerate().filter(|(_, f)| f.name == wanted).nth(nth - 1).map(|(i, _)| i);
                match (found, value.trim().is_empty()) {
                    (Some(at), true) => {
                        self.fields.remove(at);
                    }
                    (Some(at), false) => {
                        if let Some(slot) = self.fields.get_mut(at) {
                            *slot = field(name, value)?;
                        }
                    }
                    (None, true) => {}
                    (None, false) => self.fields.push(field(name, value)?),
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The section's pieces in order, neighbouring spool ranges joined.
    fn into_pieces(self) -> Vec<Piece> {
        let mut pieces: Vec<Piece> = Vec::with_capacity(self.fields.len());
        for field in self.fields {
            match (pieces.last_mut(), field.piece) {
                (Some(Piece::Spool { file: 0, end, .. }), Piece::Spool { file: 0, start, end: next })
                    if *end == start =>
                {
                    *end = next;
                }
                (_, piece) => pieces.push(piece),
            }
        }
        pieces
    }
}

/// Whether `edits` change what is relayed beyond mtac's own header lines.
pub fn changes_message(edits: &[Edit]) -> bool {
    edits.iter().any(|e| {
        matches!(e, Edit::AddHeader { .. } | Edit::InsertHeader { .. } | Edit::ChangeHeader { .. } | Edit::ReplaceBody)
    })
}

/// The relayed message: the spool's header section with the header `edits` made, then the
/// replacement `body` if a milter gave one, else the spooled body. Only the header section is
/// read here (to index its fields); nothing is copied.
pub fn edited(spool: &SpoolFile, edits: &[Edit], body: Option<SpoolFile>) -> Result<Relayed, EditError> {
    let reader = spool.reader().map_err(EditError::Spool)?;
    // Split as the milters were sent the fields (`client::MAX_FIELD`), so indexes agree.
    let mut fields = super::Fields::new(super::client::MAX_FIELD);
    let mut list = HeaderList::default();
    let mut buf = vec![0u8; 16 * 1024];
    let body_start = loop {
        let n = reader.read_at(fields.fed(), &mut buf).map_err(EditError::Spool)?;
        match buf.get(..n) {
            Some(chunk) if n > 0 => fields.feed(chunk),
            _ => fields.finish(),
        }
        while let Some((name, start, end)) = fields.next_field_span() {
            list.push_spooled(&name, start, end)?;
        }
        if let Some(start) = fields.body_start() {
            break start;
        }
    };
    let header_end = list.fields.iter().filter_map(|f| match f.piece {
        Piece::Spool { end, .. } => Some(end),
        Piece::Bytes(_) => None,
    });
    let header_end = header_end.max().unwrap_or(0);
    for edit in edits {
        list.apply(edit)?;
    }
    let mut pieces = list.into_pieces();
    // The empty line that ends the section (none when the body started with a line that is no
    // field).
    pieces.push(Piece::Spool { file: 0, start: header_end, end: body_start });
    let mut readers = vec![reader];
    let mut files = Vec::new();
    match body {
        Some(file) => {
            if body_start == header_end && !file.is_empty() {
                pieces.push(Piece::Bytes(b"\r\n".to_vec()));
            }
            readers.push(file.reader().map_err(EditError::Spool)?);
            pieces.push(Piece::Spool { file: 1, start: 0, end: file.len() });
            files.push(file);
        }
        None => pieces.push(Piece::Spool { file: 0, start: body_start, end: spool.len() }),
    }
    Ok(Relayed::new(readers, pieces, files))
}

/// A body a milter sends in place of the message's (`SMFIR_REPLBODY`, in as many packets as it
/// likes): written to a spool file of its own as it arrives, its line ends made CRLF (libmilter
/// filters often write LF), at most `max` bytes.
pub struct ReplacementBody<'a> {
    spool: &'a Spool,
    session: &'a str,
    max: u64,
    file: Option<SpoolFile>,
    /// A CR whose LF may come in the next packet.
    pending_cr: bool,
    /// Whether what was written so far ends with CRLF.
    ends_line: bool,
    failed: Option<EditError>,
}

impl<'a> ReplacementBody<'a> {
    pub fn new(spool: &'a Spool, session: &'a str, max: u64) -> Self {
        ReplacementBody { spool, session, max, file: None, pending_cr: false, ends_line: true, failed: None }
    }

    /// One packet of the replacement.
    pub async fn write(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.file.is_none() {
            match self.spool.create(self.session).await {
                Ok(file) => self.file = Some(file),
                Err(e) => {
                    self.failed = Some(EditError::Spool(e));
                    return;
                }
            }
        }
        let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 16 + 2);
        for &b in bytes {
            if self.pending_cr {
                self.pending_cr = false;
                out.extend_from_slice(b"\r\n");
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\r' => self.pending_cr = true,
                b'\n' => out.extend_from_slice(b"\r\n"),
                other => out.push(other),
            }
        }
        self.write_out(&out).await;
    }

    async fn write_out(&mut self, out: &[u8]) {
        let Some(file) = self.file.as_mut() else { return };
        if out.is_empty() {
            return;
        }
        if file.len() + out.len() as u64 > self.max {
            self.failed = Some(EditError::TooLarge(self.max));
            return;
        }
        self.ends_line = out.ends_with(b"\r\n");
        if let Err(e) = file.write(out).await {
            self.failed = Some(EditError::Spool(e));
        }
    }

    /// The replacement, its last line ended; `Ok(None)` when the milter sent none.
    pub async fn finish(mut self) -> Result<Option<SpoolFile>, EditError> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        if self.pending_cr || !self.ends_line {
            self.pending_cr = false;
            self.write_out(b"\r\n").await;
        }
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        match self.file.as_mut() {
            Some(file) => file.flush().await.map_err(EditError::Spool)?,
            None => return Ok(None),
        }
        Ok(self.file)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    /// The section `A: 1`, `B: 2`, `A: 3` (spool ranges 0..6, 6..12, 12..18) after `edits`.
    fn after(edits: &[Edit]) -> Vec<Piece> {
        let mut list = HeaderList::default();
        for (i, name) in ["A", "B", "A"].iter().enumerate() {
            list.push_spooled(name.as_bytes(), i as u64 * 6, i as u64 * 6 + 6).unwrap();
        }
        for edit in edits {
            assert!(list.apply(edit).unwrap());
        }
        list.into_pieces()
    }

    fn spooled(start: u64, end: u64) -> Piece {
        Piece::Spool { file: 0, start, end }
    }

    fn bytes(text: &str) -> Piece {
        Piece::Bytes(text.as_bytes().to_vec())
    }

    fn change(index: u32, name: &str, value: &str) -> Edit {
        Edit::ChangeHeader { index, name: name.into(), value: value.into() }
    }

    #[test]
    fn header_edits_follow_libmilter_indexes() {
        assert_eq!(after(&[]), [spooled(0, 18)], "untouched: one range");
        let add = Edit::AddHeader { name: "X-Add".into(), value: "1".into() };
        assert_eq!(after(&[add]), [spooled(0, 18), bytes("X-Add: 1\r\n")], "added at the end");
        let insert = |index| Edit::InsertHeader { index, name: "X-Ins".into(), value: "v".into() };
        assert_eq!(after(&[insert(0)]), [bytes("X-Ins: v\r\n"), spooled(0, 18)], "0 is the top");
        assert_eq!(after(&[insert(1)]), [spooled(0, 6), bytes("X-Ins: v\r\n"), spooled(6, 18)]);
        assert_eq!(after(&[insert(99)]), [spooled(0, 18), bytes("X-Ins: v\r\n")], "past the end: the end");
        // The second A, matched whatever the case, changed; then deleted.
        assert_eq!(after(&[change(2, "a", "new")]), [spooled(0, 12), bytes("a: new\r\n")]);
        assert_eq!(after(&[change(2, "A", "")]), [spooled(0, 12)], "an empty value deletes");
        assert_eq!(after(&[change(1, "A", "")]), [spooled(6, 18)]);
        assert_eq!(after(&[change(0, "A", "")]), [spooled(6, 18)], "0 counts as 1");
        assert_eq!(after(&[change(3, "A", "")]), [spooled(0, 18)], "no third A: nothing to delete");
        assert_eq!(after(&[change(1, "C", "c")]), [spooled(0, 18), bytes("C: c\r\n")], "no C: added");
        // Each edit sees the list the previous one left: delete the first A, then the (new)
        // first A is the old second.
        assert_eq!(after(&[change(1, "A", ""), change(1, "A", "")]), [spooled(6, 12)]);
        let mut list = HeaderList::default();
        let bad = Edit::AddHeader { name: "Bad Name".into(), value: "x".into() };
        assert!(matches!(list.apply(&bad), Err(EditError::InvalidField(_))));
        assert!(!list.apply(&Edit::ReplaceBody).unwrap(), "not a header edit");
    }
}
