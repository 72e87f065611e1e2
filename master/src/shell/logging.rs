//! The operator API's logging level (GET_LOGGING_LEVEL / SET_LOGGING_LEVEL): a glog-style
//! verbosity the binary maps onto its log filter. The binary installs the setter at start
//! ([`install`]); level 0 is the filter the process was started with, 1 adds debug and 2 or more
//! adds trace. A level set for a duration reverts to 0 when it ends, as Mesos does.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

type Setter = Box<dyn Fn(u32) -> Result<(), String> + Send + Sync>;

static SETTER: OnceLock<Setter> = OnceLock::new();
static LEVEL: AtomicU32 = AtomicU32::new(0);
/// Bumped by every SET, so only the latest one's timer reverts the level.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Installs how a verbosity level changes the process's log filter (once per process).
pub fn install(setter: impl Fn(u32) -> Result<(), String> + Send + Sync + 'static) {
    let _ = SETTER.set(Box::new(setter));
}

/// The current verbosity level.
pub fn level() -> u32 {
    LEVEL.load(Ordering::Relaxed)
}

/// Sets the level for `duration`, after which it returns to 0.
pub fn set(level: u32, duration: Duration) -> Result<(), String> {
    let Some(setter) = SETTER.get() else {
        return Err("this process cannot change its logging level".into());
    };
    setter(level)?;
    LEVEL.store(level, Ordering::Relaxed);
    let generation = GENERATION.fetch_add(1, Ordering::Relaxed) + 1;
    tokio::spawn(async move {
        tokio::time::sleep(duration).await;
        if GENERATION.load(Ordering::Relaxed) == generation
            && let Some(setter) = SETTER.get()
            && setter(0).is_ok()
        {
            LEVEL.store(0, Ordering::Relaxed);
        }
    });
    Ok(())
}
