//! What the CUDA engine's forward pass needs of a device, and the device itself: `Cuda`, through
//! cudarc, which loads the driver and NVRTC at run time (so this builds anywhere, and refuses to
//! start with a clear error where they are missing). The tests run the same forward pass on the
//! CPU through an emulation of the kernels (`super::emulator`).

use std::ops::Range;
use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, CudaView, LaunchConfig, PushKernelArg,
};

use crate::engine::EngineError;

/// The kernels of `kernels.cu`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    Embed,
    Matvec,
    RopeStore,
    Attention,
}

impl Kernel {
    pub const ALL: [Kernel; 4] = [Kernel::Embed, Kernel::Matvec, Kernel::RopeStore, Kernel::Attention];

    /// Its name in `kernels.cu`.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Embed => "embed",
            Kernel::Matvec => "matvec",
            Kernel::RopeStore => "rope_store",
            Kernel::Attention => "attention",
        }
    }
}

/// A kernel argument: a buffer from an offset (in floats; a `float*` parameter), or a scalar.
pub enum Arg<'a, B> {
    Buffer(&'a B, usize),
    U32(u32),
    F32(f32),
}

/// f32 buffers on a device, copies both ways, and kernel launches on one queue, in order.
pub trait Device: Send + Sync + 'static {
    type Buffer: Send + Sync + 'static;

    /// Compiles the kernels' source (`kernels.cu` with its defines).
    fn load_kernels(&mut self, source: &str) -> Result<(), EngineError>;

    fn zeros(&self, len: usize) -> Result<Self::Buffer, EngineError>;

    fn upload(&self, data: &[f32]) -> Result<Self::Buffer, EngineError>;

    /// Its length in floats.
    fn len(&self, buffer: &Self::Buffer) -> usize;

    /// Copies `data` into `buffer` from `offset`, after the launches before it.
    fn write(&self, buffer: &mut Self::Buffer, offset: usize, data: &[f32]) -> Result<(), EngineError>;

    /// Copies `range` of `buffer` out, after the launches before it.
    fn read(&self, buffer: &Self::Buffer, range: Range<usize>) -> Result<Vec<f32>, EngineError>;

    /// Queues `kernel` on `grid` blocks of `threads` threads.
    ///
    /// # Safety
    /// `args` are the kernel's parameters in order and type, and every buffer holds all that the
    /// kernel reads or writes through it for this grid (a launch may write any buffer it is given).
    unsafe fn launch(
        &self,
        kernel: Kernel,
        grid: (u32, u32),
        threads: u32,
        args: &[Arg<'_, Self::Buffer>],
    ) -> Result<(), EngineError>;
}

fn cuda_error(what: &str, error: impl std::fmt::Debug) -> EngineError {
    EngineError(format!("CUDA {what} failed: {error:?}"))
}

/// A CUDA device, through its default stream.
pub struct Cuda {
    stream: Arc<CudaStream>,
    kernels: Vec<CudaFunction>,
    context: Arc<CudaContext>,
}

impl Cuda {
    /// Opens device `ordinal`; a missing driver, NVRTC or device is a clear error.
    pub fn open(ordinal: usize) -> Result<Self, EngineError> {
        // SAFETY: only tries to load the driver library (running its initialisers, as any
        // program using CUDA does); nothing is called through it here.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(EngineError(
                "no CUDA driver found (libcuda.so): run with --engine cpu, or on a machine with an NVIDIA driver".into(),
            ));
        }
        // SAFETY: as above, for NVRTC.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Err(EngineError(
                "NVRTC (libnvrtc.so) not found: install the CUDA toolkit's runtime compiler".into(),
            ));
        }
        let count = CudaContext::device_count().map_err(|e| cuda_error("device count", e))?;
        if ordinal >= count.max(0) as usize {
            return Err(EngineError(format!(
                "--device {ordinal} does not exist: {count} CUDA device(s) found"
            )));
        }
        let context = CudaContext::new(ordinal).map_err(|e| cuda_error("context", e))?;
        Ok(Self { stream: context.default_stream(), kernels: Vec::new(), context })
    }

    /// The device's name, as the driver gives it.
    pub fn device_name(&self) -> String {
        self.context.name().unwrap_or_else(|e| format!("unnamed ({e:?})"))
    }
}

impl Device for Cuda {
    type Buffer = CudaSlice<f32>;

    fn load_kernels(&mut self, source: &str) -> Result<(), EngineError> {
        let ptx = cudarc::nvrtc::compile_ptx(source).map_err(|e| cuda_error("kernel compilation", e))?;
        let module = self.context.load_module(ptx).map_err(|e| cuda_error("module load", e))?;
        self.kernels = Kernel::ALL
            .iter()
            .map(|k| module.load_function(k.name()).map_err(|e| cuda_error("kernel lookup", e)))
            .collect::<Result<_, _>>()?;
        Ok(())
    }

    fn zeros(&self, len: usize) -> Result<CudaSlice<f32>, EngineError> {
        self.stream.alloc_zeros(len).map_err(|e| cuda_error("allocation", e))
    }

    fn upload(&self, data: &[f32]) -> Result<CudaSlice<f32>, EngineError> {
        self.stream.clone_htod(data).map_err(|e| cuda_error("upload", e))
    }

    fn len(&self, buffer: &CudaSlice<f32>) -> usize {
        buffer.len()
    }

    fn write(&self, buffer: &mut CudaSlice<f32>, offset: usize, data: &[f32]) -> Result<(), EngineError> {
        let mut target = buffer.slice_mut(offset..offset + data.len());
        self.stream.memcpy_htod(data, &mut target).map_err(|e| cuda_error("upload", e))
    }

    fn read(&self, buffer: &CudaSlice<f32>, range: Range<usize>) -> Result<Vec<f32>, EngineError> {
        self.stream.clone_dtoh(&buffer.slice(range)).map_err(|e| cuda_error("download", e))
    }

    unsafe fn launch(
        &self,
        kernel: Kernel,
        grid: (u32, u32),
        threads: u32,
        args: &[Arg<'_, CudaSlice<f32>>],
    ) -> Result<(), EngineError> {
        let function = self
            .kernels
            .get(kernel as usize)
            .ok_or_else(|| EngineError("the kernels are not loaded".into()))?;
        let views: Vec<Option<CudaView<'_, f32>>> = args
            .iter()
            .map(|arg| match arg {
                Arg::Buffer(buffer, offset) => Some(buffer.slice(*offset..)),
                _ => None,
            })
            .collect();
        let mut launch = self.stream.launch_builder(function);
        for (arg, view) in args.iter().zip(&views) {
            match (arg, view) {
                (_, Some(view)) => launch.arg(view),
                (Arg::U32(value), None) => launch.arg(value),
                (Arg::F32(value), None) => launch.arg(value),
                (Arg::Buffer(..), None) => unreachable!("every buffer has its view"),
            };
        }
        let config =
            LaunchConfig { grid_dim: (grid.0, grid.1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: the caller passes the kernel's parameters in order and type, with buffers that
        // hold all it reaches (this function's contract).
        unsafe { launch.launch(config) }.map(drop).map_err(|e| cuda_error(kernel.name(), e))
    }
}
