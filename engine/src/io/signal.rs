//! A one-shot, shard-local signal ("stop now") that any number of tasks can await.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::task::{Poll, Waker};

/// Fired once; every waiter wakes. Shard-local: lives in one shard's [`super::shard::ShardIo`].
#[derive(Debug, Default)]
pub(crate) struct Signal {
    fired: Cell<bool>,
    wakers: RefCell<Vec<Waker>>,
}

impl Signal {
    /// Fires the signal and wakes every waiter.
    pub(crate) fn fire(&self) {
        self.fired.set(true);
        let wakers = std::mem::take(&mut *self.wakers.borrow_mut());
        for w in wakers {
            w.wake();
        }
    }

    /// Whether it fired.
    pub(crate) fn is_fired(&self) -> bool {
        self.fired.get()
    }

    /// Completes once the signal has fired. A task that polls it repeatedly registers its
    /// waker once (so a loop that re-creates this future does not grow the waiter list).
    pub(crate) fn wait(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.fired.get() {
                return Poll::Ready(());
            }
            let mut wakers = self.wakers.borrow_mut();
            if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
                wakers.push(cx.waker().clone());
            }
            Poll::Pending
        })
    }

    /// Runs `f` unless the signal fires first: `Some(output)`, or `None` once fired.
    pub(crate) async fn unless_fired<F: Future>(&self, f: F) -> Option<F::Output> {
        futures_lite::future::or(async { Some(f.await) }, async {
            self.wait().await;
            None
        })
        .await
    }
}

/// A slot for one task's waker. Shard-local.
#[derive(Default)]
pub(crate) struct WakerSlot(Cell<Option<Waker>>);

impl WakerSlot {
    /// Registers `w` (cloning only when it changed).
    pub(crate) fn set(&self, w: &Waker) {
        match self.0.take() {
            Some(old) if old.will_wake(w) => self.0.set(Some(old)),
            _ => self.0.set(Some(w.clone())),
        }
    }

    /// Forgets the registered waker.
    pub(crate) fn clear(&self) {
        self.0.take();
    }

    /// Wakes the registered task, if any.
    pub(crate) fn wake(&self) {
        if let Some(w) = self.0.take() {
            w.wake();
        }
    }
}

impl std::fmt::Debug for WakerSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WakerSlot")
    }
}
