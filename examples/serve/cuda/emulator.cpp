// The CUDA execution model on the CPU, as much of it as kernels.cu uses, so that the engine's
// forward pass (its launches and its kernels, from the same source NVRTC compiles) runs in the
// tests of a machine without a GPU. Blocks run one after another; each thread of a block is a
// fiber that runs until it waits at a barrier or a warp shuffle, or ends. A barrier
// lets the block go on once every thread waits at it; a shuffle, once every lane of its warp
// does. Threads that wait at different barriers, or a barrier that some threads of the block
// never reach, are reported instead of hanging (on a GPU either is undefined).
//
// Built by the tests: g++ -std=c++17 -O2 -shared -fPIC -I DIR emulator.cpp, with DIR/kernels.cu
// the source the engine gives NVRTC. A fiber switch is a few instructions of x86-64 assembly
// (callee-saved registers and the stack pointer): ucontext's would make a system call per
// switch, and a forward pass of the real model switches hundreds of millions of times.

#include <math.h>
#include <stdio.h>
#include <string.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

struct alignas(16) float4 {
    float x, y, z, w;
};

#if !defined(__x86_64__)
#error "the kernels' emulation switches fibers in x86-64 assembly"
#endif

// Saves the callee-saved registers and the SSE and x87 control words on the current stack,
// stores the stack pointer in *from, and resumes the fiber whose stack pointer is `to`.
extern "C" void emu_switch(void** from, void* to);
asm(R"(
    .text
    .globl emu_switch
    .hidden emu_switch
    .type emu_switch, @function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch, .-emu_switch
)");

namespace emu {

enum class State { Ready, Barrier, Shuffle, Done };

struct Thread {
    void* stack_pointer;
    State state;
    dim3 index;
    float value;
    int mask;
    float result;
};

struct Grid {
    dim3 size, block, block_index;
    std::vector<Thread> threads;
    std::vector<char> stacks;
    void* scheduler = nullptr;
    unsigned current = 0;
    void (*kernel)(void**) = nullptr;
    void** args = nullptr;
};

constexpr size_t STACK = 64 * 1024;
constexpr unsigned WARP_SIZE = 32;
static Grid grid;

static Thread& self() { return grid.threads[grid.current]; }

static void wait(State state) {
    Thread& thread = self();
    thread.state = state;
    emu_switch(&thread.stack_pointer, grid.scheduler);
}

static float shuffle_xor(float value, int mask) {
    self().value = value;
    self().mask = mask;
    wait(State::Shuffle);
    return self().result;
}

}  // namespace emu

#define __global__
#define __device__ static
#define __shared__ static
#define threadIdx (emu::self().index)
#define blockIdx (emu::grid.block_index)
#define blockDim (emu::grid.block)
#define gridDim (emu::grid.size)
#define __syncthreads() emu::wait(emu::State::Barrier)
#define __shfl_xor_sync(lanes, value, mask) emu::shuffle_xor((value), (mask))

static float __int_as_float(unsigned bits) {
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

#include <kernels.cu>  // the engine's source, from -I DIR

namespace emu {

template <typename... A, size_t... I>
static void call(void (*kernel)(A...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_reference_t<A>*>(args[I])...);
}

// A kernel called with its parameters read from `args`, each a pointer to one (as
// cuLaunchKernel takes them).
template <typename... A>
static void call(void (*kernel)(A...), void** args) {
    call(kernel, args, std::index_sequence_for<A...>{});
}

template <auto Kernel>
static void run(void** args) {
    call(Kernel, args);
}

struct Entry {
    const char* name;
    void (*run)(void**);
};

static const Entry KERNELS[] = {
    {"embed", run<embed>},
    {"matvec", run<matvec>},
    {"rope_store", run<rope_store>},
    {"attention", run<attention>},
};

// A fiber's first and only frame: the kernel, then back to the scheduler for good.
static void thread_main() {
    grid.kernel(grid.args);
    wait(State::Done);
    __builtin_unreachable();
}

// A fiber's stack, ready for emu_switch to start thread_main on it: the saved control words
// and registers emu_switch restores, then thread_main as its return address, above it a null
// return address, so that thread_main starts as if called (its stack pointer 8 past a 16-byte
// boundary).
static void* fiber_stack(char* base) {
    uintptr_t top = ((uintptr_t)(base + STACK)) & ~(uintptr_t)15;
    uint64_t* slot = (uint64_t*)top;
    *--slot = 0;
    *--slot = (uint64_t)(uintptr_t)thread_main;
    for (int i = 0; i < 6; i++) *--slot = 0;       // rbp, rbx, r12-r15
    *--slot = 0x1F80ull | (0x037Full << 32);         // MXCSR and the x87 control word: defaults
    return slot;
}

// Runs the block at grid.block_index to its end; an error message, or nullptr.
static const char* run_block() {
    unsigned n = grid.block.x;
    for (unsigned i = 0; i < n; i++) {
        Thread& thread = grid.threads[i];
        thread.state = State::Ready;
        thread.index = dim3{i, 0, 0};
        thread.stack_pointer = fiber_stack(&grid.stacks[i * STACK]);
    }
    for (;;) {
        for (unsigned i = 0; i < n; i++) {
            if (grid.threads[i].state != State::Ready) continue;
            grid.current = i;
            emu_switch(&grid.scheduler, grid.threads[i].stack_pointer);
        }
        // Every thread now waits or is done: release the warps whose lanes all wait at a
        // shuffle, else the block if all its threads wait at the barrier.
        bool released = false;
        unsigned done = 0, barrier = 0;
        for (unsigned warp = 0; warp < n; warp += WARP_SIZE) {
            unsigned shuffling = 0;
            for (unsigned i = warp; i < warp + WARP_SIZE; i++) shuffling += grid.threads[i].state == State::Shuffle;
            if (shuffling == 0) continue;
            if (shuffling != WARP_SIZE) return "a warp shuffle that some lanes of the warp do not reach";
            for (unsigned i = warp; i < warp + WARP_SIZE; i++) {
                Thread& lane = grid.threads[i];
                if (lane.mask != grid.threads[warp].mask) return "the lanes of a warp shuffle with different masks";
                lane.result = grid.threads[warp + ((i - warp) ^ (unsigned)lane.mask) % WARP_SIZE].value;
            }
            for (unsigned i = warp; i < warp + WARP_SIZE; i++) grid.threads[i].state = State::Ready;
            released = true;
        }
        if (released) continue;
        for (unsigned i = 0; i < n; i++) {
            done += grid.threads[i].state == State::Done;
            barrier += grid.threads[i].state == State::Barrier;
        }
        if (done == n) return nullptr;
        if (done > 0) return "a barrier that some threads of the block never reach (they have returned)";
        if (barrier != n) return "threads waiting at different barriers";
        for (unsigned i = 0; i < n; i++) grid.threads[i].state = State::Ready;
    }
}

}  // namespace emu

// Runs `name` on a grid of (grid_x, grid_y) blocks of `threads` threads, to its end. Returns 0,
// or 1 with a message in `error`.
extern "C" int emu_launch(const char* name, unsigned grid_x, unsigned grid_y, unsigned threads, void** args,
                          char* error, size_t error_size) {
    const emu::Entry* entry = nullptr;
    for (const emu::Entry& candidate : emu::KERNELS)
        if (strcmp(candidate.name, name) == 0) entry = &candidate;
    if (!entry) {
        snprintf(error, error_size, "no kernel %s", name);
        return 1;
    }
    if (threads == 0 || threads > 1024 || threads % emu::WARP_SIZE != 0) {
        snprintf(error, error_size, "%s: a block of %u threads (a multiple of 32 up to 1024 here)", name, threads);
        return 1;
    }
    emu::Grid& grid = emu::grid;
    grid.size = dim3{grid_x, grid_y, 1};
    grid.block = dim3{threads, 1, 1};
    grid.threads.resize(threads);
    grid.stacks.resize(threads * emu::STACK);
    grid.kernel = entry->run;
    grid.args = args;
    for (unsigned y = 0; y < grid_y; y++) {
        for (unsigned x = 0; x < grid_x; x++) {
            grid.block_index = dim3{x, y, 0};
            if (const char* problem = emu::run_block()) {
                snprintf(error, error_size, "%s, block (%u, %u): %s", name, x, y, problem);
                return 1;
            }
        }
    }
    return 0;
}
