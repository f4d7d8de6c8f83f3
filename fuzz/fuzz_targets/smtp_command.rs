//! Arbitrary bytes on the command channel: framing and parsing must never panic, every line
//! the reader hands out is within its limit and free of LF, and every reply built from a parse
//! error (which may echo client text) is well-formed on the wire.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtac_runtime::smtp::{parse, Frame, LineReader, Reply, MAX_REPLY_LINE};

fn assert_wire_ok(bytes: &[u8]) {
    assert!(bytes.ends_with(b"\r\n"));
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        assert!(line.len() <= MAX_REPLY_LINE);
        assert!(line.ends_with(b"\r\n"));
        let body = &line[..line.len() - 2];
        assert!(body.iter().all(|&b| (0x20..0x7f).contains(&b)), "unsafe byte in reply");
        assert!(body.len() >= 3 && body[..3].iter().all(u8::is_ascii_digit));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, input)) = data.split_first() else {
        return;
    };
    let max_line = usize::from(control) * 4;
    let mut reader = LineReader::new(max_line);
    let mut buf: Vec<u8> = Vec::new();
    // Feed in two pieces so the NeedMore/skip paths run.
    let split = usize::from(control) % (input.len() + 1);
    for piece in [&input[..split], &input[split..]] {
        buf.extend_from_slice(piece);
        loop {
            let framed = reader.read(&buf);
            assert!(framed.consumed <= buf.len());
            let more = match framed.frame {
                Frame::Line(line) => {
                    assert!(line.len() <= max_line);
                    assert!(!line.contains(&b'\n'));
                    match parse(line) {
                        Ok(_) => {}
                        Err(e) => assert_wire_ok(&e.reply().to_bytes()),
                    }
                    true
                }
                Frame::TooLong => true,
                Frame::NeedMore => false,
            };
            buf.drain(..framed.consumed);
            if !more {
                break;
            }
        }
    }
    // Client text echoed into replies must not break them either.
    if let Ok(text) = std::str::from_utf8(input) {
        assert_wire_ok(&Reply::bad_sequence(text).to_bytes());
        if let Ok(r) = Reply::new(550, None, text) {
            assert_wire_ok(&r.to_bytes());
        }
    }
});
