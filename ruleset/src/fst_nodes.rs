//! fst's node format, read with a check at every step.
//!
//! The `fst` crate builds our domain and address tables, and its reader would
//! serve them, but it reads bytes on trust: a transition that leads outside
//! the table, a node whose fields run past its start or a pack width over 8
//! panics (an index out of bounds, an underflow, an assertion), and a
//! ruleset is a file anyone with write access to the push path can craft. So
//! the tables are read here instead: the same layout (fst 0.4, format version
//! 3, `raw/node.rs`), decoded with `get` and checked arithmetic, so that no
//! input can make a read panic.
//!
//! Opening a table runs [`check`]: one pass down the bytes that proves every
//! node decodes and every transition leads to the start of another node.
//! That is what makes a crafted table an error at open rather than wrong
//! answers later; lookups still check every read, so even a table that was
//! never checked cannot make them panic.
//!
//! # The layout, briefly
//!
//! After a 16-byte header (format version, fst type) come the nodes, each
//! written after all the nodes it leads to, back to back with no gap, and
//! read *backwards* from its address, the position of its last byte (the
//! state byte). The root is the last node; a footer (key count, root
//! address, CRC32C) follows. Address 0 is the empty final node, which has no
//! bytes. The two top bits of the state byte give the kind of node:
//!
//! - `11` one transition to the node written just before, input in the
//!   state byte (one of 63 common bytes) or in the byte below, no output;
//! - `10` one transition with a packed address delta and maybe an output;
//! - `0f` any number of transitions (`f`: final), with a pack-size byte,
//!   and for more than 32 transitions a 256-byte index by input.

/// Bytes before the first node: format version and fst type, both u64.
pub(crate) const HEADER_LEN: usize = 16;

/// The fst format version our builder writes and this reader reads.
pub(crate) const VERSION: u64 = 3;

/// fst's address of the empty final node, which has no bytes.
pub(crate) const EMPTY_ADDRESS: usize = 0;

/// Nodes with more transitions than this carry a 256-byte index by input.
const INDEX_THRESHOLD: usize = 32;

/// The inputs fst stores in the state byte itself: index `i` in the low six
/// bits means `COMMON_INPUTS[i - 1]`; 0 means the input is in its own byte.
/// This is fst's table (`raw/common_inputs.rs`); the test
/// `common_inputs_match_fst` checks it against what fst's builder writes.
const COMMON_INPUTS: &[u8; 63] = b"te/oasripcnw.hlm-du012g=:bf3y5&_4v9678k%?xCDASFIBEjPTzRNM+LOqHG";

/// What one node holds, decoded from its state and pack-size bytes. Every
/// field of the node lies in `end..=addr`, and `end >= HEADER_LEN`.
#[derive(Debug, Clone, Copy)]
struct Node {
    kind: Kind,
    /// Lowest byte of the node.
    end: usize,
    /// Position of the pack-size byte; the fields lie below it.
    top: usize,
    ntrans: usize,
    /// Width of a transition's address delta, 1 to 8 (0 without transitions).
    tsize: usize,
    /// Width of an output, 0 (no outputs) to 8.
    osize: usize,
    /// 256 if the node has an index by input, else 0.
    index: usize,
    is_final: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// One transition, on `input`, to the node just below, no output.
    Next { input: u8 },
    /// One transition, on `input`, with an address delta and maybe an output.
    One { input: u8 },
    /// Any number of transitions.
    Any,
}

/// The outcome of following one input byte from a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// The transition's target and output.
    To(usize, u64),
    /// No transition for this byte (or a node that does not decode, which a
    /// checked table does not have).
    Missing,
}

/// Reads `width` (≤ 8) bytes at `at` as a little-endian integer.
///
/// One 8-byte load and a mask where 8 bytes are there (always, inside a
/// table: the 20-byte footer follows the last node); the branch on the
/// width that a byte loop takes is what a lookup would mispredict.
#[inline(always)]
fn uint(data: &[u8], at: usize, width: usize) -> Option<u64> {
    if width > 8 {
        return None;
    }
    let mask = u64::MAX.checked_shr(64 - 8 * width as u32).unwrap_or(0);
    if let Some(word) = data.get(at..at.checked_add(8)?) {
        let word: [u8; 8] = word.try_into().ok()?;
        return Some(u64::from_le_bytes(word) & mask);
    }
    let bytes = data.get(at..at.checked_add(width)?)?;
    Some(bytes.iter().rev().fold(0u64, |n, &b| (n << 8) | u64::from(b)))
}

/// The input of a one-transition node (state `11` or `10`) at `addr`, and
/// how many bytes it takes below the state byte: none for one of the common
/// inputs, which the state byte names, else one.
#[inline(always)]
fn one_input(data: &[u8], addr: usize, state: u8) -> Option<(u8, usize)> {
    match usize::from(state & 0x3f).checked_sub(1) {
        Some(i) => Some((*COMMON_INPUTS.get(i)?, 0)),
        None => Some((*data.get(addr.checked_sub(1)?)?, 1)),
    }
}

/// The node at `addr`, or `None` if it does not decode within the table.
/// Inlined into every caller: most of a lookup's time is spent here.
#[inline(always)]
fn node(data: &[u8], addr: usize) -> Option<Node> {
    let state = *data.get(addr)?;
    let common = usize::from(state & 0x3f);
    let node = match state >> 6 {
        0b11 => {
            let (input, input_len) = one_input(data, addr, state)?;
            let end = addr.checked_sub(input_len)?;
            Node { kind: Kind::Next { input }, end, top: end, ntrans: 1, tsize: 0, osize: 0, index: 0, is_final: false }
        }
        0b10 => {
            let (input, input_len) = one_input(data, addr, state)?;
            let top = addr.checked_sub(input_len + 1)?;
            let packed = *data.get(top)?;
            let (tsize, osize) = (usize::from(packed >> 4), usize::from(packed & 0x0f));
            if !(1..=8).contains(&tsize) || osize > 8 {
                return None;
            }
            let end = top.checked_sub(tsize + osize)?;
            Node { kind: Kind::One { input }, end, top, ntrans: 1, tsize, osize, index: 0, is_final: false }
        }
        _ => {
            let is_final = state & 0x40 != 0;
            let (ntrans, ntrans_len) = match common {
                0 => match *data.get(addr.checked_sub(1)?)? {
                    // 1 transition is always a state of its own, so 1 here means 256.
                    1 => (256, 1),
                    n => (usize::from(n), 1),
                },
                n => (n, 0),
            };
            let top = addr.checked_sub(ntrans_len + 1)?;
            let packed = *data.get(top)?;
            let (tsize, osize) = (usize::from(packed >> 4), usize::from(packed & 0x0f));
            if (ntrans > 0 && !(1..=8).contains(&tsize)) || tsize > 8 || osize > 8 {
                return None;
            }
            let index = if ntrans > INDEX_THRESHOLD { 256 } else { 0 };
            // Inputs, addresses and index; then the outputs and the final output.
            let fields = ntrans * (1 + tsize) + index + ntrans * osize + if is_final { osize } else { 0 };
            let end = top.checked_sub(fields)?;
            Node { kind: Kind::Any, end, top, ntrans, tsize, osize, index, is_final }
        }
    };
    (node.end >= HEADER_LEN).then_some(node)
}

impl Node {
    /// The target of a transition whose address delta is `delta`.
    #[inline]
    fn target(&self, delta: u64) -> Option<usize> {
        match delta {
            0 => Some(EMPTY_ADDRESS),
            d => self.end.checked_sub(usize::try_from(d).ok()?),
        }
    }

    /// Target and output of the `i`th transition of an `Any` node.
    #[inline]
    fn any_transition(&self, data: &[u8], i: usize) -> Option<(usize, u64)> {
        let delta_at = self.top.checked_sub(self.index + self.ntrans + (i + 1) * self.tsize)?;
        let addr = self.target(uint(data, delta_at, self.tsize)?)?;
        let out = match self.osize {
            0 => 0,
            w => {
                let at = self.top.checked_sub(self.index + self.ntrans * (1 + self.tsize) + (i + 1) * w)?;
                uint(data, at, w)?
            }
        };
        Some((addr, out))
    }

    /// Index of the transition on `b` in an `Any` node.
    #[inline]
    fn find(&self, data: &[u8], b: u8) -> Option<usize> {
        if self.index > 0 {
            let at = self.top.checked_sub(256)? + usize::from(b);
            let i = usize::from(*data.get(at)?);
            (i < self.ntrans).then_some(i)
        } else {
            find_input(data, self.top, self.ntrans, b)
        }
    }
}

/// The transition on `b` among the `n` (at most 32) inputs stored below
/// `top`, transition 0 highest, compared eight at a time: a byte loop
/// mispredicts its exit on almost every node with several transitions.
///
/// Loads may reach below the inputs, into the node's other fields or the
/// node below; those bytes are masked off, and the zero-byte test is the
/// exact one (no borrow from a masked byte can fake a match).
#[inline(always)]
fn find_input(data: &[u8], top: usize, n: usize, b: u8) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let splat = ONES.wrapping_mul(u64::from(b));
    let mut first = 0;
    while first < n {
        let high = top.checked_sub(first)?;
        let word: [u8; 8] = data.get(high.checked_sub(8)?..high)?.try_into().ok()?;
        let x = u64::from_le_bytes(word) ^ splat;
        // The high bit of each byte of x that is zero.
        let zero = !((x & LOW7).wrapping_add(LOW7) | x | LOW7);
        // Only the top `n - first` bytes are inputs.
        let inputs = (n - first).min(8);
        let hit = zero & !u64::MAX.checked_shr(8 * inputs as u32).unwrap_or(0);
        if hit != 0 {
            return Some(first + hit.leading_zeros() as usize / 8);
        }
        first += 8;
    }
    None
}

/// Follows input `b` from the node at `addr`.
#[inline]
pub(crate) fn step(data: &[u8], addr: usize, b: u8) -> Step {
    step_checked(data, addr, b).map_or(Step::Missing, |(to, out)| Step::To(to, out))
}

#[inline]
fn step_checked(data: &[u8], addr: usize, b: u8) -> Option<(usize, u64)> {
    if addr == EMPTY_ADDRESS {
        return None;
    }
    let state = *data.get(addr)?;
    if state >> 6 == 0b11 {
        // The commonest node in a table of addresses (a key's tail): one
        // transition to the node just below. Decoded here without the rest.
        let (input, input_len) = one_input(data, addr, state)?;
        let end = addr - input_len;
        return (input == b && end > HEADER_LEN).then(|| (end - 1, 0));
    }
    let n = node(data, addr)?;
    match n.kind {
        Kind::Next { input } if input == b => Some((n.end.checked_sub(1)?, 0)),
        Kind::One { input } if input == b => {
            let addr = n.target(uint(data, n.top.checked_sub(n.tsize)?, n.tsize)?)?;
            let out = match n.osize {
                0 => 0,
                w => uint(data, n.top.checked_sub(n.tsize + w)?, w)?,
            };
            Some((addr, out))
        }
        Kind::Any => n.any_transition(data, n.find(data, b)?),
        Kind::Next { .. } | Kind::One { .. } => None,
    }
}

/// The final output of the node at `addr` if it is final (a key ends
/// there), else `None`.
#[inline]
pub(crate) fn final_output(data: &[u8], addr: usize) -> Option<u64> {
    if addr == EMPTY_ADDRESS {
        return Some(0);
    }
    let n = node(data, addr)?;
    if !n.is_final {
        return None;
    }
    match n.osize {
        0 => Some(0),
        w => uint(data, n.end, w),
    }
}

/// Checks that the nodes of the fst in `data` (header, nodes, footer of
/// `footer_len` bytes) with its root at `root` all decode and that every
/// transition leads to the start of a node below it.
///
/// fst writes nodes back to back, each after its targets, so the nodes from
/// the root down to the header are one sequence: the walk decodes each once,
/// moving to the byte below its lowest one, and must land exactly on the
/// header. It marks each node's address and each transition target in two
/// bitmaps; a target that is not a node's address is the only thing left to
/// find, one pass over the bitmaps at the end. Sequential and O(size): a
/// million addresses take tens of milliseconds.
///
/// Not checked: that a node's inputs are distinct and sorted (a duplicate
/// makes a lookup miss, never fail), and that outputs do not overflow when
/// summed (lookups add them with a check).
pub(crate) fn check(data: &[u8], root: usize, footer_len: usize) -> Result<(), &'static str> {
    if root == EMPTY_ADDRESS {
        return if data.len() == HEADER_LEN + footer_len { Ok(()) } else { Err("an empty table has nodes") };
    }
    if root.checked_add(1 + footer_len) != Some(data.len()) {
        return Err("the root node does not end where the footer starts");
    }
    let words = data.len() / 64 + 1;
    let mut starts = vec![0u64; words];
    let mut targets = vec![0u64; words];
    let mut addr = root;
    loop {
        if let Some(word) = starts.get_mut(addr / 64) {
            *word |= 1 << (addr % 64);
        }
        let state = *data.get(addr).ok_or("a node does not decode")?;
        if state >> 6 == 0b11 {
            // Most nodes: one transition to the node just below, which is
            // where the walk goes next; only its size matters here.
            let (_, input_len) = one_input(data, addr, state).ok_or("a node does not decode")?;
            let end = addr - input_len;
            if end <= HEADER_LEN {
                return Err("the lowest node leads to the node below it, and there is none");
            }
            addr = end - 1;
            continue;
        }
        let n = node(data, addr).ok_or("a node does not decode")?;
        match n.kind {
            Kind::Next { .. } => {
                // Its target is the node just below, the walk's next stop.
                if n.end == HEADER_LEN {
                    return Err("the lowest node leads to the node below it, and there is none");
                }
            }
            Kind::One { .. } => {
                let delta_at = n.top.checked_sub(n.tsize).ok_or("a node does not decode")?;
                let delta = uint(data, delta_at, n.tsize).ok_or("a node does not decode")?;
                mark_target(&mut targets, &n, delta)?;
            }
            Kind::Any => {
                let first = n.top.checked_sub(n.index + n.ntrans).ok_or("a node does not decode")?;
                for i in 0..n.ntrans {
                    let at = first.checked_sub((i + 1) * n.tsize).ok_or("a node does not decode")?;
                    let delta = uint(data, at, n.tsize).ok_or("a node does not decode")?;
                    mark_target(&mut targets, &n, delta)?;
                }
            }
        }
        if n.end == HEADER_LEN {
            break;
        }
        addr = n.end - 1;
    }
    if starts.iter().zip(&targets).any(|(s, t)| t & !s != 0) {
        return Err("a transition leads into the middle of a node");
    }
    Ok(())
}

fn mark_target(targets: &mut [u64], n: &Node, delta: u64) -> Result<(), &'static str> {
    let addr = n.target(delta).ok_or("a transition leads below the table")?;
    if addr == EMPTY_ADDRESS {
        return Ok(());
    }
    if addr < HEADER_LEN {
        return Err("a transition leads into the header");
    }
    let word = targets.get_mut(addr / 64).ok_or("a transition leads outside the table")?;
    *word |= 1 << (addr % 64);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;
    use fst::raw::{Builder, Fst};

    fn footer_len() -> usize {
        20
    }

    fn build(keys: &[(&[u8], u64)]) -> Vec<u8> {
        let mut b = Builder::memory();
        for (k, v) in keys {
            b.insert(k, *v).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn root(data: &[u8]) -> usize {
        Fst::new(data.to_vec()).unwrap().root().addr()
    }

    /// Looks `key` up the way the tables do.
    fn get(data: &[u8], key: &[u8]) -> Option<u64> {
        get_from(data, root(data), key)
    }

    fn get_from(data: &[u8], root: usize, key: &[u8]) -> Option<u64> {
        let mut addr = root;
        let mut out = 0u64;
        for &b in key {
            match step(data, addr, b) {
                Step::To(to, o) => {
                    addr = to;
                    out += o;
                }
                Step::Missing => return None,
            }
        }
        final_output(data, addr).map(|f| out + f)
    }

    #[test]
    fn common_inputs_match_fst() {
        // A one-key fst's root is a one-transition node on the key's byte:
        // its state byte names the common input, if the byte is one.
        for b in 0..=255u8 {
            let data = build(&[(&[b], 7)]);
            let r = root(&data);
            let idx = usize::from(data[r] & 0x3f);
            if idx != 0 {
                assert_eq!(COMMON_INPUTS[idx - 1], b, "common input {idx}");
            }
            assert_eq!(get(&data, &[b]), Some(7));
        }
        // And every entry of the table is some byte's index.
        let mut seen = [false; 63];
        for b in 0..=255u8 {
            let data = build(&[(&[b], 7)]);
            let idx = usize::from(data[root(&data)] & 0x3f);
            if idx != 0 {
                seen[idx - 1] = true;
            }
        }
        assert!(seen.iter().all(|&s| s));
    }

    /// Every node kind, with and without outputs, with and without an
    /// index, agrees with fst's own reader and passes the check.
    #[test]
    fn agrees_with_fst() {
        let mut keys: Vec<Vec<u8>> = Vec::new();
        // 256 transitions at the root (index, ntrans byte 1), 40 below "m" (index).
        for b in 0..=255u8 {
            keys.push(vec![b]);
            keys.push(vec![b, b'x', b'y', b'z']);
        }
        for b in 0..40u8 {
            keys.push(vec![b'm', b'a' + b % 26, b]);
        }
        for w in ["te", "tea", "ten", "to", "inn", "in", "i", "a.b.c", "zz\u{ff}"] {
            keys.push(w.as_bytes().to_vec());
        }
        keys.sort();
        keys.dedup();
        for outputs in [false, true] {
            let pairs: Vec<(&[u8], u64)> = keys
                .iter()
                .enumerate()
                .map(|(i, k)| (k.as_slice(), if outputs { (i as u64) * 1_000_003 } else { 0 }))
                .collect();
            let data = build(&pairs);
            check(&data, root(&data), footer_len()).unwrap();
            let map = fst::Map::new(data.clone()).unwrap();
            for (k, v) in &pairs {
                assert_eq!(get(&data, k), Some(*v), "{k:?}");
                assert_eq!(map.get(k), Some(*v));
            }
            for probe in [&b"t"[..], b"tex", b"m", b"ma", b"zz", b"a.b", b"\xff\xff", b""] {
                assert_eq!(get(&data, probe), map.get(probe), "{probe:?}");
            }
        }
    }

    #[test]
    fn empty_tables() {
        let data = build(&[]);
        check(&data, root(&data), footer_len()).unwrap();
        assert_eq!(get(&data, b"a"), None);
        assert_eq!(get(&data, b""), None);
    }

    /// Every single-byte change of a small table either fails the check or
    /// leaves a table whose lookups return without panicking.
    #[test]
    fn damaged_tables_never_panic() {
        let keys: Vec<(&[u8], u64)> =
            vec![(b"com.example", 3), (b"com.example.mail", 900), (b"org.example", 70_000), (b"te", 1)];
        let good = build(&keys);
        let r = root(&good);
        let mut refused = 0;
        for at in HEADER_LEN..=r {
            for value in [0u8, 1, 0x3f, 0x40, 0x7f, 0x80, 0xbf, 0xc0, 0xff, good[at] ^ 1] {
                let mut bad = good.clone();
                bad[at] = value;
                if check(&bad, r, footer_len()).is_err() {
                    refused += 1;
                }
                for (k, _) in &keys {
                    let _ = get_from(&bad, r, k);
                }
            }
        }
        assert!(refused > 0);
    }

    #[test]
    fn a_transition_into_the_middle_of_a_node_is_refused() {
        // "ab" → 1 and "cd" → 2: the root has two transitions; point the
        // second one's delta one byte off.
        let data = build(&[(b"ab", 1), (b"cd", 2), (b"ef", 3)]);
        let r = root(&data);
        check(&data, r, footer_len()).unwrap();
        let n = node(&data, r).unwrap();
        assert_eq!(n.kind, Kind::Any);
        let first = n.top - n.index - n.ntrans;
        let mut refused = 0;
        for i in 0..n.ntrans {
            let at = first - (i + 1) * n.tsize;
            let mut bad = data.clone();
            bad[at] = bad[at].wrapping_add(1);
            if check(&bad, r, footer_len()).is_err() {
                refused += 1;
            }
        }
        assert!(refused > 0);
    }
}
