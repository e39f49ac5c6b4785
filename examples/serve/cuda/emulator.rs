//! The kernels on the CPU, for the tests: `kernels.cu`, exactly as the engine gives it to NVRTC,
//! compiled by g++ against `emulator.cpp` (the CUDA execution model, a fiber per thread) into a
//! shared library, loaded here as a `Device`. The engine's forward pass then runs unchanged —
//! its launches, offsets and bounds, and the kernels' indexing, barriers and shuffles — where
//! there is no GPU. Floating-point results differ from a GPU's in rounding only (a GPU fuses
//! multiply-adds).

use std::cell::UnsafeCell;
use std::ffi::{c_char, c_void, CStr, CString};
use std::ops::Range;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::device::{Arg, Device, Kernel};
use crate::engine::EngineError;

type Launch = unsafe extern "C" fn(*const c_char, u32, u32, u32, *mut *mut c_void, *mut c_char, usize) -> i32;

pub struct Emulator {
    /// The compiled kernels, and their entry point (valid while the library is loaded).
    kernels: Option<(libloading::Library, Launch)>,
    /// The emulation runs one launch at a time (its grid is global state).
    running: Mutex<()>,
}

/// Host memory a launch may write through the pointers it is given.
pub struct HostBuffer(Box<[UnsafeCell<f32>]>);

// SAFETY: the buffer is written only by launches and `write`, which the engine makes under its
// lock; reads (`read`) copy out of it.
unsafe impl Sync for HostBuffer {}

impl HostBuffer {
    fn pointer(&self, offset: usize) -> *mut f32 {
        UnsafeCell::raw_get(self.0[offset..].as_ptr())
    }
}

/// One kernel argument as `emu_launch` takes it: a pointer to a value of the parameter's type.
#[repr(C)]
union Slot {
    pointer: *mut f32,
    unsigned: u32,
    float: f32,
}

impl Emulator {
    pub fn new() -> Self {
        Self { kernels: None, running: Mutex::new(()) }
    }
}

impl Device for Emulator {
    type Buffer = HostBuffer;

    fn load_kernels(&mut self, source: &str) -> Result<(), EngineError> {
        // A directory per build: the loader would hand back an earlier library of the same path.
        static BUILDS: AtomicUsize = AtomicUsize::new(0);
        let build = BUILDS.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("tokentrace-emulator-{}-{build}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| EngineError(format!("{}: {e}", dir.display())))?;
        std::fs::write(dir.join("kernels.cu"), source).map_err(|e| EngineError(e.to_string()))?;
        let library: PathBuf = dir.join("libkernels.so");
        let harness = concat!(env!("CARGO_MANIFEST_DIR"), "/cuda/emulator.cpp");
        let output = Command::new("g++")
            .args(["-std=c++17", "-O2", "-Wall", "-Werror", "-shared", "-fPIC", "-I"])
            .arg(&dir)
            .arg(harness)
            .arg("-o")
            .arg(&library)
            .output()
            .map_err(|e| EngineError(format!("g++ (to emulate the kernels): {e}")))?;
        if !output.status.success() {
            return Err(EngineError(format!(
                "the kernels do not compile for the emulator:\n{}",
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        // SAFETY: the library is the one just built from emulator.cpp, whose initialisers only
        // set up its empty grid; `emu_launch` has the type `Launch` names there.
        let kernels = unsafe {
            let library = libloading::Library::new(&library).map_err(|e| EngineError(e.to_string()))?;
            let launch = *library.get::<Launch>(b"emu_launch").map_err(|e| EngineError(e.to_string()))?;
            (library, launch)
        };
        // The loaded library stays mapped; its files are no longer needed.
        let _ = std::fs::remove_dir_all(&dir);
        self.kernels = Some(kernels);
        Ok(())
    }

    fn zeros(&self, len: usize) -> Result<HostBuffer, EngineError> {
        Ok(HostBuffer((0..len).map(|_| UnsafeCell::new(0.0)).collect()))
    }

    fn upload(&self, data: &[f32]) -> Result<HostBuffer, EngineError> {
        Ok(HostBuffer(data.iter().map(|&v| UnsafeCell::new(v)).collect()))
    }

    fn len(&self, buffer: &HostBuffer) -> usize {
        buffer.0.len()
    }

    fn write(&self, buffer: &mut HostBuffer, offset: usize, data: &[f32]) -> Result<(), EngineError> {
        for (cell, value) in buffer.0[offset..offset + data.len()].iter_mut().zip(data) {
            *cell.get_mut() = *value;
        }
        Ok(())
    }

    fn read(&self, buffer: &HostBuffer, range: Range<usize>) -> Result<Vec<f32>, EngineError> {
        let _running = self.running.lock().map_err(|_| EngineError("emulator lock poisoned".into()))?;
        // SAFETY: no launch is running (the lock above), so nothing writes these cells now.
        Ok(buffer.0[range].iter().map(|cell| unsafe { *cell.get() }).collect())
    }

    unsafe fn launch(
        &self,
        kernel: Kernel,
        grid: (u32, u32),
        threads: u32,
        args: &[Arg<'_, HostBuffer>],
    ) -> Result<(), EngineError> {
        let (_, launch) =
            self.kernels.as_ref().ok_or_else(|| EngineError("the kernels are not loaded".into()))?;
        let mut slots: Vec<Slot> = args
            .iter()
            .map(|arg| match arg {
                Arg::Buffer(buffer, offset) => Slot { pointer: buffer.pointer(*offset) },
                Arg::U32(value) => Slot { unsigned: *value },
                Arg::F32(value) => Slot { float: *value },
            })
            .collect();
        let mut pointers: Vec<*mut c_void> =
            slots.iter_mut().map(|slot| (slot as *mut Slot).cast()).collect();
        let name = CString::new(kernel.name()).expect("kernel names have no NUL");
        let mut error = [0 as c_char; 512];
        let _running = self.running.lock().map_err(|_| EngineError("emulator lock poisoned".into()))?;
        // SAFETY: the caller's contract (the arguments are the kernel's, and the buffers hold
        // what it reaches); `pointers` and `error` outlive the call, which runs the grid to its
        // end before returning.
        let status = unsafe {
            launch(
                name.as_ptr(),
                grid.0,
                grid.1,
                threads,
                pointers.as_mut_ptr(),
                error.as_mut_ptr(),
                error.len(),
            )
        };
        if status != 0 {
            // SAFETY: emu_launch wrote a NUL-terminated message (snprintf) into `error`.
            let message = unsafe { CStr::from_ptr(error.as_ptr()) };
            return Err(EngineError(format!("emulated launch: {}", message.to_string_lossy())));
        }
        Ok(())
    }
}
