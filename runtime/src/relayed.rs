//! What the relay phase sends after mtac's own header lines: the spooled message as it was
//! written, or — when a milter edited it — its header section as edited (ranges of the spool
//! file and the milters' new fields) followed by the spooled body or the milter's replacement
//! body (a second spool file). Read in order, a chunk at a time: the message is never held
//! whole in memory, and the spool file is never rewritten (**invariant: the spool file is
//! written once**; edits are an overlay over it).

use crate::spool::{SpoolFile, SpoolReader};
use std::io;

/// One stretch of the relayed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Bytes made by mtac (a milter's header field, a missing line end).
    Bytes(Vec<u8>),
    /// `start..end` of the `file`th spool file.
    Spool { file: usize, start: u64, end: u64 },
}

/// The message after mtac's header lines, as a sequence of pieces read in order.
#[derive(Debug)]
pub struct Relayed {
    readers: Vec<SpoolReader>,
    pieces: Vec<Piece>,
    /// The piece being read and the offset in it.
    at: usize,
    offset: u64,
    /// Spool files made for this message (a replaced body), removed when it drops.
    _files: Vec<SpoolFile>,
}

impl Relayed {
    /// The spooled message, unchanged.
    pub fn whole(spool: &SpoolFile) -> io::Result<Relayed> {
        let end = spool.len();
        Ok(Relayed::new(vec![spool.reader()?], vec![Piece::Spool { file: 0, start: 0, end }], Vec::new()))
    }

    /// Pieces of `readers`' files (and bytes); `files` are kept until the message drops.
    pub fn new(readers: Vec<SpoolReader>, pieces: Vec<Piece>, files: Vec<SpoolFile>) -> Relayed {
        let pieces = pieces
            .into_iter()
            .filter(|p| match p {
                Piece::Bytes(b) => !b.is_empty(),
                Piece::Spool { start, end, .. } => end > start,
            })
            .collect();
        Relayed { readers, pieces, at: 0, offset: 0, _files: files }
    }

    /// Another reader of the same message from its start (for a blocking task: the signer, the
    /// maildir); the files stay with `self`, which must outlive it.
    pub fn reading_copy(&self) -> io::Result<Relayed> {
        let readers = self.readers.iter().map(SpoolReader::try_clone).collect::<io::Result<Vec<_>>>()?;
        Ok(Relayed { readers, pieces: self.pieces.clone(), at: 0, offset: 0, _files: Vec::new() })
    }

    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        self.pieces.iter().map(piece_len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pieces, for tests and logs.
    pub fn pieces(&self) -> &[Piece] {
        &self.pieces
    }

    /// Back to the start.
    pub fn rewind(&mut self) {
        (self.at, self.offset) = (0, 0);
    }

    /// Fill `buf` with the next bytes; 0 at the end.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while let Some(piece) = self.pieces.get(self.at) {
            let left = piece_len(piece).saturating_sub(self.offset);
            if left == 0 {
                (self.at, self.offset) = (self.at + 1, 0);
                continue;
            }
            let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
            let out = buf.get_mut(..want).unwrap_or_default();
            let n = match piece {
                Piece::Bytes(bytes) => {
                    let from = usize::try_from(self.offset).unwrap_or(usize::MAX);
                    let src = bytes.get(from..from + want).unwrap_or_default();
                    out.get_mut(..src.len()).unwrap_or_default().copy_from_slice(src);
                    src.len()
                }
                Piece::Spool { file, start, .. } => {
                    let reader = self.readers.get(*file).ok_or_else(|| io::Error::other("no such spool file"))?;
                    reader.read_at(start + self.offset, out)?
                }
            };
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "spool file shorter than its piece"));
            }
            self.offset += n as u64;
            return Ok(n);
        }
        Ok(0)
    }
}

fn piece_len(piece: &Piece) -> u64 {
    match piece {
        Piece::Bytes(b) => b.len() as u64,
        Piece::Spool { start, end, .. } => end.saturating_sub(*start),
    }
}
