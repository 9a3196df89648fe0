//! The heap a piece of code holds, measured: the `herald` binary's global
//! allocator is the system's, counting what each thread allocates and
//! frees, so `herald bench` reports the bytes a structure really holds
//! (the SLO layer's 20 full metrics) instead of a sum computed from its
//! capacities.
//!
//! The count is per thread: [`held_by`] sees what its closure allocated on
//! the calling thread and still holds when it returns. Memory another
//! thread allocates, or frees, is not in it. The cost is a thread-local
//! add per allocation.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The system allocator, counting each thread's net bytes.
pub struct Counting;

thread_local! {
    static NET: Cell<isize> = const { Cell::new(0) };
}

fn add(bytes: isize) {
    let _ = NET.try_with(|n| n.set(n.get().wrapping_add(bytes)));
}

// SAFETY: every call is the system allocator's, with its own arguments;
// counting touches only a const-initialised thread-local, which never
// allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            add(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            add(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        add(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            add(new_size as isize - layout.size() as isize);
        }
        p
    }
}

/// Run `f` and return what it gave and the heap bytes it left allocated on
/// this thread (what it built and returned, say).
pub fn held_by<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = NET.with(Cell::get);
    let value = f();
    let after = NET.with(Cell::get);
    (value, after.saturating_sub(before).max(0) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_closure_keeps_is_counted_and_what_it_frees_is_not() {
        let (kept, bytes) = held_by(|| vec![7u8; 1 << 20]);
        assert!(bytes >= 1 << 20, "{bytes}");
        assert!(bytes < (1 << 20) + 4096, "{bytes}");
        let ((), freed) = held_by(|| drop(vec![0u64; 1 << 16]));
        assert_eq!(freed, 0);
        let (_, after_drop) = held_by(|| drop(kept));
        assert_eq!(after_drop, 0, "a release is not a negative hold");
    }
}
