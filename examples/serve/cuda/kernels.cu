// The CUDA engine's kernels: a llama forward pass in f32, one warp per output row in the
// matrix-vector products (decode at batch 1 reads every weight once per token, so the rows
// are read whole, 16 bytes per lane at a time). Compiled by NVRTC at start, after the engine
// (`kernel_source` in mod.rs) prepends its defines: MAX_CONTEXT (the attention's score
// buffer) and MAX_COLS (the widest matrix input), both checked against the shared memory a
// block may use, ATTENTION_THREADS (the attention's block), and matvec's modes STORE, ADD and
// GATED.
//
// Every kernel takes `blockIdx.y` (or `blockIdx.x` where there is no row axis) as the token
// of the chunk it works on, so one launch serves a whole prefill chunk or one decode step.
// Block sizes are multiples of 32, and every thread of a block reaches each barrier.

#define WARP 32

__device__ float warp_sum(float value) {
    for (int mask = WARP / 2; mask > 0; mask >>= 1) value += __shfl_xor_sync(0xffffffffu, value, mask);
    return value;
}

// The sum over the block, returned to every thread; every thread must call it. `scratch`
// holds one float per warp.
__device__ float block_sum(float value, float* scratch) {
    value = warp_sum(value);
    __syncthreads();  // earlier readers of scratch are done
    if (threadIdx.x % WARP == 0) scratch[threadIdx.x / WARP] = value;
    __syncthreads();
    float total = 0.0f;
    for (unsigned w = 0; w < blockDim.x / WARP; w++) total += scratch[w];
    return total;
}

__device__ float block_max(float value, float* scratch) {
    for (int mask = WARP / 2; mask > 0; mask >>= 1) value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, mask));
    __syncthreads();
    if (threadIdx.x % WARP == 0) scratch[threadIdx.x / WARP] = value;
    __syncthreads();
    float best = scratch[0];
    for (unsigned w = 1; w < blockDim.x / WARP; w++) best = fmaxf(best, scratch[w]);
    return best;
}

// x[t] = table[tokens[t]]: one block per token. Token ids travel as floats (exact below 2^24;
// the engine checks them against the vocabulary).
extern "C" __global__ void embed(const float* tokens, const float* table, unsigned dim, float* x) {
    size_t token = (size_t)tokens[blockIdx.x];
    for (unsigned i = threadIdx.x; i < dim; i += blockDim.x) x[(size_t)blockIdx.x * dim + i] = table[token * dim + i];
}

// One lane's share of row · input, summed over the warp; cols is a multiple of 4.
__device__ float row_dot(const float* row, const float* input, unsigned cols) {
    const float4* w = (const float4*)row;
    const float4* x = (const float4*)input;
    float sum = 0.0f;
    for (unsigned i = threadIdx.x % WARP; i < cols / 4; i += WARP) {
        float4 a = w[i];
        float4 b = x[i];
        sum += a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
    }
    return warp_sum(sum);
}

// y[t][r] = W[r] · x[t] for the rows r of W (rows × cols, row-major), a warp per row, for
// token t = blockIdx.y. With `normed`, x[t] is first RMS-normalised and scaled by `norm` (the
// layer's RMSNorm, folded in). mode STORE writes y; ADD adds to it (the residual stream: y is
// never x, which other blocks are still reading); GATED reads W as 2·rows rows, the gate's then
// the up projection's, and writes silu(gate · x) · (up · x).
extern "C" __global__ void matvec(const float* w, unsigned rows, unsigned cols, const float* x, unsigned normed,
                                  const float* norm, float eps, float* y, unsigned mode) {
    __shared__ float4 staged[MAX_COLS / 4];
    __shared__ float scratch[WARP];
    float* input = (float*)staged;
    const float* token_x = x + (size_t)blockIdx.y * cols;
    if (normed) {
        float squares = 0.0f;
        for (unsigned i = threadIdx.x; i < cols; i += blockDim.x) squares += token_x[i] * token_x[i];
        float rms = sqrtf(block_sum(squares, scratch) / (float)cols + eps);
        for (unsigned i = threadIdx.x; i < cols; i += blockDim.x) input[i] = token_x[i] / rms * norm[i];
    } else {
        for (unsigned i = threadIdx.x; i < cols; i += blockDim.x) input[i] = token_x[i];
    }
    __syncthreads();

    // Rows in turn, a warp each, across the grid (the staged input serves them all); no
    // barrier follows, so a warp may leave when its rows are done.
    for (unsigned r = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP; r < rows;
         r += gridDim.x * (blockDim.x / WARP)) {
        float out = row_dot(w + (size_t)r * cols, input, cols);
        if (mode == GATED) {
            float up = row_dot(w + (size_t)(rows + r) * cols, input, cols);
            out = out / (1.0f + expf(-out)) * up;
        }
        if (threadIdx.x % WARP == 0) {
            size_t at = (size_t)blockIdx.y * rows + r;
            y[at] = mode == ADD ? y[at] + out : out;
        }
    }
}

// For token t = blockIdx.x at position start + t: rotates its query and key heads (adjacent
// pairs, by the position's angles in cos/sin, (positions, head_dim / 2)) in place in qkv, then
// stores its key and value heads in the cache, laid out (kv_heads, capacity, head_dim).
extern "C" __global__ void rope_store(float* qkv, unsigned heads, unsigned kv_heads, unsigned head_dim,
                                      const float* cos, const float* sin, unsigned start, float* keys,
                                      float* values, unsigned capacity) {
    unsigned position = start + blockIdx.x, half = head_dim / 2;
    float* row = qkv + (size_t)blockIdx.x * (heads + 2 * kv_heads) * head_dim;
    for (unsigned p = threadIdx.x; p < (heads + kv_heads) * half; p += blockDim.x) {
        unsigned head = p / half, i = p % half;
        float* pair = row + head * head_dim + 2 * i;
        float c = cos[(size_t)position * half + i], s = sin[(size_t)position * half + i];
        float even = pair[0], odd = pair[1];
        pair[0] = even * c - odd * s;
        pair[1] = even * s + odd * c;
    }
    __syncthreads();  // the rotated keys, written by other threads, are read below
    for (unsigned i = threadIdx.x; i < kv_heads * head_dim; i += blockDim.x) {
        size_t at = ((size_t)(i / head_dim) * capacity + position) * head_dim + i % head_dim;
        keys[at] = row[heads * head_dim + i];
        values[at] = row[(heads + kv_heads) * head_dim + i];
    }
}

// Causal attention of query head blockIdx.x of token t = blockIdx.y (position start + t) over
// the cached positions 0..=start + t of its KV head (query heads share KV heads in groups):
// one warp per key for the scores, then a softmax, then the weighted values, each dimension
// summed by blockDim / head_dim threads over interleaved keys. out is (tokens, heads·head_dim).
extern "C" __global__ void attention(const float* qkv, unsigned heads, unsigned kv_heads, unsigned head_dim,
                                     const float* keys, const float* values, unsigned capacity, unsigned start,
                                     float* out) {
    __shared__ float scores[MAX_CONTEXT];
    __shared__ float scratch[WARP];
    __shared__ float partial[ATTENTION_THREADS];
    unsigned head = blockIdx.x, t = blockIdx.y, count = start + t + 1;
    const float* q = qkv + (size_t)t * (heads + 2 * kv_heads) * head_dim + head * head_dim;
    size_t base = (size_t)(head / (heads / kv_heads)) * capacity * head_dim;
    const float* k = keys + base;
    const float* v = values + base;

    float root = sqrtf((float)head_dim);
    for (unsigned r = threadIdx.x / WARP; r < count; r += blockDim.x / WARP) {
        float s = 0.0f;
        for (unsigned d = threadIdx.x % WARP; d < head_dim; d += WARP) s += q[d] * k[(size_t)r * head_dim + d];
        s = warp_sum(s);
        if (threadIdx.x % WARP == 0) scores[r] = s / root;
    }
    __syncthreads();

    // NVRTC has no <math.h>, so no INFINITY: -inf by its bit pattern.
    float best = __int_as_float(0xff800000);
    for (unsigned r = threadIdx.x; r < count; r += blockDim.x) best = fmaxf(best, scores[r]);
    best = block_max(best, scratch);
    float sum = 0.0f;
    for (unsigned r = threadIdx.x; r < count; r += blockDim.x) {
        float e = expf(scores[r] - best);
        scores[r] = e;
        sum += e;
    }
    sum = block_sum(sum, scratch);  // its barriers also publish the exponentials

    unsigned parts = blockDim.x / head_dim, d = threadIdx.x % head_dim, part = threadIdx.x / head_dim;
    float acc = 0.0f;
    if (part < parts)
        for (unsigned r = part; r < count; r += parts) acc += scores[r] * v[(size_t)r * head_dim + d];
    partial[threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.x < head_dim) {
        float total = 0.0f;
        for (unsigned p = 0; p < parts; p++) total += partial[p * head_dim + threadIdx.x];
        out[((size_t)t * heads + head) * head_dim + threadIdx.x] = total / sum;
    }
}
