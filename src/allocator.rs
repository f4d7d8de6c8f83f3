//! The global allocator: mimalloc, with transparent huge pages turned off before its first
//! allocation.
//!
//! mimalloc in every build, so the binary benchmarked is the one that ships. Under a server's
//! churn of small allocations musl's malloc costs 30-50% more CPU per relayed message and
//! glibc's 5-20% more (BENCHMARKS.md, `bench/cpu-ab.py`).
//!
//! mimalloc carves its heaps out of large aligned regions and asks for huge pages on them
//! (`madvise(MADV_HUGEPAGE)`); on a host whose THP setting is `madvise` (Debian's and the
//! benchmark machine's) that gave a node at rest 19.6 MiB instead of 12, and on one set to
//! `always` (RHEL's default) the kernel maps them unasked. There was no CPU gain that
//! `bench/cpu-ab.py` could tell from noise, and a perimeter runs out of memory before it runs
//! out of TLB entries. So mimalloc is built without its own requests (Cargo.toml, `no_thp`),
//! and the process turns THP off (PR_SET_THP_DISABLE, which also covers `always` hosts) before
//! the first Rust allocation: that is before `main` (the standard library allocates first),
//! hence this wrapper rather than a call at the top of `main` (which still left 4 MiB of huge
//! pages). mimalloc's own set-up runs earlier still (a C constructor), so on an `always` host
//! the page it touches then may be a huge one; on a `madvise` host nothing can be.

// The only unsafe code of the binary: GlobalAlloc's methods are unsafe to implement and to
// call; each one here hands its arguments unchanged to mimalloc's, under the same contract.
#![allow(unsafe_code)]

use mimalloc::MiMalloc;
use std::alloc::{GlobalAlloc, Layout};
use std::sync::Once;

pub struct Allocator;

static HUGE_PAGES_OFF: Once = Once::new();

/// PR_SET_THP_DISABLE, for the whole process and its children. It must neither allocate nor
/// log (it runs inside the first allocation); a kernel without it leaves things as they were.
fn huge_pages_off() {
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}

// SAFETY: every method forwards to mimalloc's implementation with the caller's arguments, so
// the caller's guarantees are mimalloc's; the only addition is a call that does not allocate.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HUGE_PAGES_OFF.call_once(huge_pages_off);
        // SAFETY: forwarded unchanged (see the impl).
        unsafe { MiMalloc.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        HUGE_PAGES_OFF.call_once(huge_pages_off);
        // SAFETY: forwarded unchanged (see the impl).
        unsafe { MiMalloc.alloc_zeroed(layout) }
    }

    // A block to free or resize came from `alloc`, so the switch is already made.
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged (see the impl).
        unsafe { MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged (see the impl).
        unsafe { MiMalloc.realloc(ptr, layout, new_size) }
    }
}
