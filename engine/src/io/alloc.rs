//! The binary's global allocator: mimalloc, except for page-aligned blocks of 64 KiB or more,
//! which get their own anonymous mapping.
//!
//! Why: glommio allocates each shard's `io_memory` with the global allocator (page-aligned)
//! and registers it with three io_uring rings. The kernel charges RLIMIT_MEMLOCK for every
//! page a registration pins, and for a transparent huge page that is the whole 2 MiB, once
//! per ring. mimalloc backs its arenas with transparent huge pages, so a 256 KiB `io_memory`
//! cost 6 MiB of a normal user's 8 MiB limit and the second shard's registration failed.
//! A separate small mapping is charged for exactly its size (3 × 256 KiB per shard).

use std::alloc::{GlobalAlloc, Layout};

use mimalloc::MiMalloc;

/// Blocks at least this large and aligned to exactly a page get their own mapping.
const DIRECT_MIN_BYTES: usize = 64 * 1024;
const PAGE_BYTES: usize = 4096;

/// mimalloc with page-aligned large blocks mapped directly (see the module docs).
#[derive(Debug)]
pub struct BrokerAlloc;

fn is_direct(layout: Layout) -> bool {
    layout.align() == PAGE_BYTES && layout.size() >= DIRECT_MIN_BYTES
}

// SAFETY: every block is either mimalloc's (forwarded with the same layout) or a private
// anonymous mapping of `layout.size()` bytes, page-aligned as requested; `is_direct` depends
// only on the layout, which the caller passes unchanged to `dealloc`, so each block is freed
// by the allocator that made it.
unsafe impl GlobalAlloc for BrokerAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !is_direct(layout) {
            // SAFETY: forwarded with the caller's guarantees (non-zero size).
            return unsafe { MiMalloc.alloc(layout) };
        }
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                layout.size(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return std::ptr::null_mut();
        }
        // Keep it out of transparent huge pages even where THP is "always".
        // SAFETY: advice on the mapping we just made.
        unsafe { libc::madvise(p, layout.size(), libc::MADV_NOHUGEPAGE) };
        p.cast()
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_direct(layout) {
            // SAFETY: anonymous mappings are zero-filled.
            unsafe { self.alloc(layout) }
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { MiMalloc.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_direct(layout) {
            // SAFETY: `ptr` is a mapping of `layout.size()` bytes made by `alloc`.
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
        } else {
            // SAFETY: `ptr` came from mimalloc with this layout.
            unsafe { MiMalloc.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` is valid for `layout.align()`.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !is_direct(layout) && !is_direct(new_layout) {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { MiMalloc.realloc(ptr, layout, new_size) };
        }
        // SAFETY: allocate, copy the common prefix, free the old block with its layout.
        unsafe {
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

/// Has mimalloc return this thread's freed pages to the OS now (`mi_collect(true)`, a walk
/// over the thread's heap; called at most once per idle sweep).
///
/// mimalloc gives back a page that became free only after a delay (`purge_delay`), and
/// only when this thread next allocates or frees: a shard whose connections just went to
/// sleep (`idle.rs`), and freed their tasks and glommio sources, would otherwise keep that
/// memory resident while it idles. Called by the idle task after connections fell asleep;
/// not on any hot path.
pub(crate) fn collect_freed() {
    // SAFETY: no preconditions; acts on the calling thread's heap.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_and_forwarded_blocks_round_trip() {
        let a = BrokerAlloc;
        for (size, align) in [(64 * 1024, 4096), (300 * 1024, 4096), (100, 8), (1 << 20, 64)] {
            let layout = Layout::from_size_align(size, align).unwrap();
            // SAFETY: non-zero sizes; each block is written, grown, and freed with its layout.
            unsafe {
                let p = a.alloc_zeroed(layout);
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0);
                assert_eq!(*p.add(size - 1), 0);
                *p = 7;
                let q = a.realloc(p, layout, size * 2);
                assert!(!q.is_null());
                assert_eq!(*q, 7);
                a.dealloc(q, Layout::from_size_align(size * 2, align).unwrap());
            }
        }
    }
}
