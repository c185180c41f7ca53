//! The allocator for op guests: a bump allocator over a static arena.
//!
//! Why: the worker runs every call in a fresh instance, so nothing a call
//! allocates needs freeing, and it resets the instance's memory to the
//! module's image afterwards. Rust's default allocator (dlmalloc) calls
//! `memory.grow` on the first allocation of every call (the canonical ABI
//! allocates the `args` list through it); wasmtime then opens the grown pages
//! with `mprotect` and closes them again when the pool slot is reused, each
//! time flushing TLBs. A static arena lives in the module's image (`.bss`),
//! so a call that fits in it never grows memory: a sandboxed call measured
//! about 3x cheaper (BENCHMARKS.md, P2).
//!
//! A call that outgrows the arena goes on in pages it grows, still bumping
//! (so it works, only without the saving), up to the worker's memory cap
//! (`OP_MEMORY_MB`), which fails the task naming the cap. An allocation that
//! cannot be satisfied at all returns null, which Rust turns into an abort:
//! the task fails as a trap.
//!
//! ```text
//! #[cfg(target_arch = "wasm32")]
//! #[global_allocator]
//! static ALLOCATOR: guest_arena::Arena<{ 64 * 1024 }> = guest_arena::Arena::new();
//! ```

#![no_std]

use core::alloc::{GlobalAlloc, Layout};
use core::cell::{Cell, UnsafeCell};
use core::ptr;

/// `SIZE` bytes to allocate from before growing memory. All zeros until
/// used, so it takes no room in the module file.
#[repr(C, align(16))]
pub struct Arena<const SIZE: usize> {
    bytes: UnsafeCell<[u8; SIZE]>,
    /// The region being bumped through, as addresses: `next` is where the
    /// next allocation may start, `end` where the region ends. Both 0 until
    /// the first allocation (a static's address is not known at compile
    /// time), then the arena, then grown pages.
    next: Cell<usize>,
    end: Cell<usize>,
}

// A guest is single-threaded (`wasm32` without the `atomics` feature has no
// threads), so the cells are never touched concurrently. Elsewhere the arena
// is not `Sync`, so it cannot be a global allocator there.
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
unsafe impl<const SIZE: usize> Sync for Arena<SIZE> {}

impl<const SIZE: usize> Arena<SIZE> {
    pub const fn new() -> Self {
        Self {
            bytes: UnsafeCell::new([0; SIZE]),
            next: Cell::new(0),
            end: Cell::new(0),
        }
    }

    fn bump(&self, layout: Layout) -> *mut u8 {
        if self.end.get() == 0 {
            let base = self.bytes.get().cast::<u8>().expose_provenance();
            self.next.set(base);
            self.end.set(base + SIZE);
        }
        if let Some(start) = self.fit(layout) {
            return start;
        }
        if grow(layout, &self.next, &self.end)
            && let Some(start) = self.fit(layout)
        {
            return start;
        }
        ptr::null_mut()
    }

    /// Takes `layout` from the current region, if it fits.
    fn fit(&self, layout: Layout) -> Option<*mut u8> {
        // Aligns the address itself: a layout may ask for more than the
        // arena's own alignment.
        let start = self.next.get().checked_next_multiple_of(layout.align())?;
        let end = start.checked_add(layout.size())?;
        if end > self.end.get() {
            return None;
        }
        self.next.set(end);
        Some(ptr::with_exposed_provenance_mut(start))
    }

    /// Whether `ptr..ptr + size` is the last block handed out.
    fn is_last(&self, ptr: *mut u8, size: usize) -> bool {
        (ptr.addr()).checked_add(size) == Some(self.next.get())
    }
}

impl<const SIZE: usize> Default for Arena<SIZE> {
    fn default() -> Self {
        Self::new()
    }
}

unsafe impl<const SIZE: usize> GlobalAlloc for Arena<SIZE> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.bump(layout)
    }

    /// Only the last block is taken back (a temporary's room serves the next
    /// allocation); the rest goes when the instance does.
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if self.is_last(ptr, layout.size()) {
            self.next.set(ptr.addr());
        }
    }

    /// The last block grows or shrinks in place (a `String` or `Vec` being
    /// built); any other moves.
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if self.is_last(ptr, layout.size())
            && let Some(end) = ptr.addr().checked_add(new_size)
            && end <= self.end.get()
        {
            self.next.set(end);
            return ptr;
        }
        // SAFETY: the caller guarantees `new_size`, rounded up to the
        // alignment, does not overflow `isize` (`GlobalAlloc::realloc`).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let moved = self.bump(new_layout);
        if !moved.is_null() {
            // SAFETY: both blocks are live, distinct and at least this long.
            unsafe { ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size)) };
        }
        moved
    }
}

/// Grows linear memory by enough pages for `layout` and makes them the
/// region (extending it when they follow on). False when memory cannot grow.
#[cfg(target_arch = "wasm32")]
fn grow(layout: Layout, next: &Cell<usize>, end: &Cell<usize>) -> bool {
    const PAGE: usize = 64 * 1024;
    let Some(pages) = layout
        .size()
        .checked_add(layout.align())
        .map(|bytes| bytes.div_ceil(PAGE))
    else {
        return false;
    };
    let old = core::arch::wasm32::memory_grow(0, pages);
    if old == usize::MAX {
        return false;
    }
    let Some((start, new_end)) = old.checked_mul(PAGE).and_then(|start| {
        let grown = pages.checked_mul(PAGE)?;
        Some((start, start.checked_add(grown)?))
    }) else {
        return false;
    };
    if start != end.get() {
        next.set(start);
    }
    end.set(new_end);
    true
}

/// Off `wasm32` (this crate's own tests) there is no memory to grow.
#[cfg(not(target_arch = "wasm32"))]
fn grow(_layout: Layout, _next: &Cell<usize>, _end: &Cell<usize>) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn blocks_are_aligned_as_asked_even_beyond_the_arena_s_own_alignment() {
        let arena = Arena::<4096>::new();
        for align in [1, 2, 4, 8, 16, 32, 64, 256] {
            // An odd size first, so the next start is misaligned.
            let _ = unsafe { arena.alloc(layout(3, 1)) };
            let block = unsafe { arena.alloc(layout(8, align)) };
            assert!(!block.is_null());
            assert_eq!(block.addr() % align, 0, "align {align}");
        }
    }

    #[test]
    fn blocks_do_not_overlap_and_keep_their_contents() {
        let arena = Arena::<1024>::new();
        let blocks: [*mut u8; 8] = core::array::from_fn(|i| {
            let block = unsafe { arena.alloc(layout(16, 8)) };
            unsafe { ptr::write_bytes(block, i as u8, 16) };
            block
        });
        for (i, block) in blocks.iter().enumerate() {
            let bytes = unsafe { core::slice::from_raw_parts(*block, 16) };
            assert!(bytes.iter().all(|b| *b == i as u8), "block {i}: {bytes:?}");
        }
    }

    #[test]
    fn an_allocation_that_does_not_fit_is_null_and_the_arena_stays_usable() {
        let arena = Arena::<256>::new();
        assert!(!unsafe { arena.alloc(layout(200, 8)) }.is_null());
        assert!(unsafe { arena.alloc(layout(100, 8)) }.is_null());
        // Sizes whose end overflows the address space are refused, not wrapped.
        assert!(unsafe { arena.alloc(layout(isize::MAX as usize - 64, 1)) }.is_null());
        assert!(unsafe { arena.alloc(layout(16, 1 << 30)) }.is_null());
        assert!(!unsafe { arena.alloc(layout(48, 8)) }.is_null());
        assert!(unsafe { arena.alloc(layout(16, 8)) }.is_null());
    }

    #[test]
    fn the_last_block_is_taken_back_and_others_are_not() {
        let arena = Arena::<256>::new();
        let first = unsafe { arena.alloc(layout(32, 8)) };
        let second = unsafe { arena.alloc(layout(32, 8)) };
        unsafe { arena.dealloc(first, layout(32, 8)) };
        let third = unsafe { arena.alloc(layout(32, 8)) };
        assert_ne!(third, first, "a block that is not last stays taken");
        unsafe { arena.dealloc(third, layout(32, 8)) };
        assert_eq!(unsafe { arena.alloc(layout(32, 8)) }, third);
        assert!(second < third);
    }

    #[test]
    fn realloc_grows_the_last_block_in_place_and_moves_any_other_with_its_bytes() {
        let arena = Arena::<256>::new();
        let a = unsafe { arena.alloc(layout(8, 8)) };
        unsafe { ptr::copy_nonoverlapping(b"abcdefgh".as_ptr(), a, 8) };
        let grown = unsafe { arena.realloc(a, layout(8, 8), 64) };
        assert_eq!(grown, a, "the last block grows in place");
        let b = unsafe { arena.alloc(layout(8, 8)) };
        let moved = unsafe { arena.realloc(a, layout(64, 8), 100) };
        assert!(moved > b, "a block that is not last moves past the others");
        assert_eq!(
            unsafe { core::slice::from_raw_parts(moved, 8) },
            b"abcdefgh"
        );
        assert!(unsafe { arena.realloc(moved, layout(100, 8), 1000) }.is_null());
    }
}
