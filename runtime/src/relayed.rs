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

    /// Fill `buf` with the next bytes; 0 at the end. The tests' reference for
    /// [`Relayed::next_chunk`], which every reader of a message uses.
    #[cfg(test)]
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some((at, from, want)) = self.take(buf.len()) else { return Ok(0) };
        let out = buf.get_mut(..want).unwrap_or_default();
        match self.pieces.get(at) {
            Some(Piece::Bytes(bytes)) => out.copy_from_slice(stretch(bytes, from, want)?),
            Some(Piece::Spool { file, start, .. }) => read_exactly(self.reader(*file)?, start + from, out)?,
            None => return Ok(0),
        }
        Ok(want)
    }

    /// The next bytes, at most `max`, without copying what is already in memory: mtac's own
    /// bytes and a spooled message that never grew into its file are lent as they are; a
    /// spool file's bytes are read into `scratch`. Empty at the end.
    pub fn next_chunk<'a>(&'a mut self, max: usize, scratch: &'a mut Vec<u8>) -> io::Result<&'a [u8]> {
        let Some((at, from, want)) = self.take(max) else { return Ok(&[]) };
        match self.pieces.get(at) {
            Some(Piece::Bytes(bytes)) => stretch(bytes, from, want),
            Some(Piece::Spool { file, start, .. }) => {
                let reader = self.reader(*file)?;
                if let Some(bytes) = reader.in_memory_at(start + from, want) {
                    return stretch(bytes, 0, want);
                }
                // Zeroed only where it grows past what it held: a few times per message, and
                // only for one large enough to be in its file.
                scratch.resize(want, 0);
                read_exactly(reader, start + from, scratch)?;
                Ok(scratch)
            }
            None => Ok(&[]),
        }
    }

    /// Moves past the next `want` bytes (at most `max`) of the current piece, skipping finished
    /// ones: which piece, where in it they start, how many. `None` at the end. The bytes count
    /// as read even if reading them then fails: after an error, `rewind` before reading again.
    fn take(&mut self, max: usize) -> Option<(usize, u64, usize)> {
        while let Some(piece) = self.pieces.get(self.at) {
            let left = piece_len(piece).saturating_sub(self.offset);
            if left == 0 {
                (self.at, self.offset) = (self.at + 1, 0);
                continue;
            }
            let want = usize::try_from(left).unwrap_or(usize::MAX).min(max);
            let from = self.offset;
            self.offset += want as u64;
            return Some((self.at, from, want));
        }
        None
    }

    fn reader(&self, file: usize) -> io::Result<&SpoolReader> {
        self.readers.get(file).ok_or_else(|| io::Error::other("no such spool file"))
    }
}

/// `want` bytes of `bytes` from `from`; an error where they are shorter than their piece.
fn stretch(bytes: &[u8], from: u64, want: usize) -> io::Result<&[u8]> {
    usize::try_from(from)
        .ok()
        .and_then(|from| bytes.get(from..)?.get(..want))
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "spooled message shorter than its piece"))
}

/// Fills `out` from `offset` of a spool file: a short read means the file is shorter than its
/// piece, and the relay must not send a message with a hole in it.
fn read_exactly(reader: &SpoolReader, offset: u64, out: &mut [u8]) -> io::Result<()> {
    if reader.read_at(offset, out)? < out.len() {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "spool file shorter than its piece"));
    }
    Ok(())
}

fn piece_len(piece: &Piece) -> u64 {
    match piece {
        Piece::Bytes(b) => b.len() as u64,
        Piece::Spool { start, end, .. } => end.saturating_sub(*start),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::spool::{Spool, IN_MEMORY_UP_TO};

    /// A message spooled on a tmpfs: in memory when small, in its file when past the mark.
    async fn spooled(spool: &Spool, bytes: &[u8]) -> SpoolFile {
        let mut file = spool.create("R1").await.unwrap();
        file.write(bytes).await.unwrap();
        file.flush().await.unwrap();
        file
    }

    fn by_chunks(relayed: &mut Relayed, max: usize, scratch: &mut Vec<u8>) -> Vec<u8> {
        relayed.rewind();
        let mut all = Vec::new();
        loop {
            let chunk = relayed.next_chunk(max, scratch).unwrap();
            if chunk.is_empty() {
                return all;
            }
            assert!(chunk.len() <= max);
            all.extend_from_slice(chunk);
        }
    }

    fn by_reads(relayed: &mut Relayed, max: usize) -> Vec<u8> {
        relayed.rewind();
        let (mut all, mut buf) = (Vec::new(), vec![0; max]);
        loop {
            let n = relayed.read(&mut buf).unwrap();
            if n == 0 {
                return all;
            }
            all.extend_from_slice(&buf[..n]);
        }
    }

    /// The relay's chunks are the message read in order, whatever the pieces; bytes already in
    /// memory are lent, not copied (the scratch buffer is never used for them).
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn chunks_are_the_message_and_lend_what_is_in_memory() {
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let spool = Spool::new(&dir.path().join("spool")).unwrap();
        let small = spooled(&spool, b"A: 1\r\nB: 2\r\n\r\nbody\r\n").await;
        let large_text: Vec<u8> = (0..IN_MEMORY_UP_TO + 5000).map(|i| b'a' + (i % 26) as u8).collect();
        let large = spooled(&spool, &large_text).await;
        assert!(!small.is_file() && large.is_file());

        // A milter's edit over the small message: its first field, a new one, the rest.
        let pieces = vec![
            Piece::Spool { file: 0, start: 0, end: 6 },
            Piece::Bytes(b"X-New: v\r\n".to_vec()),
            Piece::Spool { file: 0, start: 6, end: small.len() },
        ];
        let mut edited = Relayed::new(vec![small.reader().unwrap()], pieces, Vec::new());
        let expected = b"A: 1\r\nX-New: v\r\nB: 2\r\n\r\nbody\r\n";
        for max in [1, 3, 7, 64 * 1024] {
            let mut scratch = Vec::new();
            assert_eq!(by_chunks(&mut edited, max, &mut scratch), expected, "max {max}");
            assert_eq!(scratch.capacity(), 0, "bytes in memory were copied");
            assert_eq!(by_reads(&mut edited, max), expected, "max {max}");
        }

        let mut whole = Relayed::whole(&large).unwrap();
        for max in [1000, 64 * 1024, 1 << 20] {
            let mut scratch = Vec::new();
            assert_eq!(by_chunks(&mut whole, max, &mut scratch), large_text, "max {max}");
            assert_eq!(by_reads(&mut whole, max), large_text, "max {max}");
        }
    }

    /// A piece longer than its file is an error, never a message with a hole or a short end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_piece_past_the_end_of_its_spool_is_an_error() {
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let spool = Spool::new(&dir.path().join("spool")).unwrap();
        let small = spooled(&spool, b"short\r\n").await;
        let large = spooled(&spool, &vec![b'x'; usize::try_from(IN_MEMORY_UP_TO).unwrap() + 10]).await;
        for (file, end) in [(&small, 100), (&large, IN_MEMORY_UP_TO + 100)] {
            let pieces = vec![Piece::Spool { file: 0, start: 0, end }];
            let mut relayed = Relayed::new(vec![file.reader().unwrap()], pieces, Vec::new());
            let mut scratch = Vec::new();
            let error = loop {
                match relayed.next_chunk(1 << 20, &mut scratch) {
                    Ok(chunk) => assert!(!chunk.is_empty(), "ended without an error"),
                    Err(error) => break error,
                }
            };
            assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
            relayed.rewind();
            let mut buf = vec![0; 1 << 20];
            assert_eq!(relayed.read(&mut buf).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        }
    }
}
