//! An allocator that overwrites every heap block it frees, switched on by
//! the session (`spore session serve`) before it reads any request.
//!
//! Why: a `-K` password crosses many buffers on its way to a `sudo` hop
//! (the request frame, the JSON parser's scratch, the connect call's
//! arguments and their JSON, the message body, every `Vec` that grew and
//! moved). Each is freed when done, and a freed block keeps its bytes
//! until reused: in a session that lives for hours, the password would
//! stay readable in its memory. Wiping at the one place every buffer ends
//! covers the copies no code names. The live copy (`Targets`' `Secret`)
//! is wiped when the run clears it.
//!
//! A cold CLI run leaves it off: the process ends with the run, and a
//! 100 MiB put pays nothing for it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering};

static ON: AtomicBool = AtomicBool::new(false);

/// From now on, every block freed in this process is zeroed first.
pub fn switch_on() {
    ON.store(true, Ordering::SeqCst);
}

/// The system allocator, with blocks zeroed before they are freed once
/// [`switch_on`] was called.
pub struct WipeOnFree;

// SAFETY: every method hands its arguments to `System`, whose contract is
// the caller's; the extra work stays inside the block being freed (`size`
// bytes from `ptr`, which the caller owns until `dealloc` returns) or in
// one freshly allocated.
unsafe impl GlobalAlloc for WipeOnFree {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if ON.load(Ordering::Relaxed) {
            wipe(ptr, layout.size());
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !ON.load(Ordering::Relaxed) {
            // SAFETY: the caller's contract, passed on.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // The C allocator's realloc may move the block and free the old
        // one unwiped: move it ourselves.
        // SAFETY: `new_size` is non-zero and, rounded up to the alignment,
        // fits `isize` (the caller's contract for `realloc`).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: a non-zero-sized layout.
        let new = unsafe { System.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are live, distinct, and at least this long.
            unsafe { std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
            // SAFETY: `ptr` was allocated with `layout`, and is not used again.
            unsafe { self.dealloc(ptr, layout) };
        }
        new
    }
}

/// Zero `len` bytes at `ptr`, in a way the compiler may not drop because
/// the block is freed right after.
fn wipe(ptr: *mut u8, len: usize) {
    // SAFETY: `ptr` is a live block of at least `len` bytes owned by the
    // caller; explicit_bzero only writes within it.
    unsafe { libc::explicit_bzero(ptr.cast(), len) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_moved_by_realloc_keeps_its_bytes() {
        let a = WipeOnFree;
        switch_on();
        let layout = Layout::from_size_align(64, 8).unwrap();
        // SAFETY: non-zero layouts; each block is used only while live.
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            std::ptr::write_bytes(p, 0xa5, 64);
            let q = a.realloc(p, layout, 4096);
            assert!(!q.is_null());
            assert!((0..64).all(|i| *q.add(i) == 0xa5), "its bytes kept");
            let r = a.realloc(q, Layout::from_size_align(4096, 8).unwrap(), 16);
            assert!((0..16).all(|i| *r.add(i) == 0xa5), "shrunk, its bytes kept");
            a.dealloc(r, Layout::from_size_align(16, 8).unwrap());
        }
    }
}
