import CPuna

/// What running a model will cost in memory, broken down so a refusal can say what to change.
/// Shared by `puna info --ctx N` and the start of every run (which refuses before loading when the
/// total exceeds the budget).
///
/// Every item follows what the code really allocates (LanguageModel `forwardLayers`, KVCache, the thread
/// pool's buffers in ops.c/threadpool.c, LoRA.swift, Merge.swift); the only approximations are the
/// Swift-side tables (tokenizer, GGUF metadata) and the program itself, measured on x86_64 Linux.
/// The KV cache is counted full: its pages are touched as positions fill, so a run that stops
/// early uses less. The model file is counted whole: its pages are clean and file-backed (the
/// kernel may drop and re-read them), but a run whose working set does not fit re-reads weights
/// from disk on every token, so they belong in the budget.
public struct MemoryEstimate {
    public struct Item {
        /// Machine-readable name (JSON key).
        public let key: String
        /// Human description.
        public let name: String
        public let bytes: Int
    }

    public var items: [Item] = []

    public var totalBytes: Int { items.reduce(0) { MemoryEstimate.sum($0, $1.bytes) } }

    /// The most an estimate says: 128 PiB, more than any machine has. Sizes come from file headers,
    /// which a hostile file can make overflow any product, so the arithmetic saturates here instead
    /// (an estimate of "more than any machine has" serves as well as the exact figure).
    public static let saturated = Int.max >> 6

    /// a · b · …, at most `saturated` (negative factors count as 0).
    static func product(_ factors: Int...) -> Int {
        var p = 1
        for f in factors {
            let (r, overflow) = p.multipliedReportingOverflow(by: max(f, 0))
            if overflow || r > saturated { return saturated }
            p = r
        }
        return p
    }

    /// a + b + …, at most `saturated`.
    static func sum(_ terms: Int...) -> Int {
        var total = 0
        for t in terms { total = min(total + min(max(t, 0), saturated), saturated) }
        return total
    }

    public init() {}

    public mutating func add(_ key: String, _ name: String, _ bytes: Int) { items.append(Item(key: key, name: name, bytes: bytes)) }

    /// Bytes of the items with this key (0 when absent).
    public func bytes(_ key: String) -> Int { items.reduce(0) { MemoryEstimate.sum($0, $1.key == key ? $1.bytes : 0) } }

    /// Bytes of one K or V cache entry per element for a cache type.
    public static func cacheBytesPerElement(_ type: GGMLType) -> Double {
        Double(type.bytesPerBlock) / Double(max(type.blockSize, 1))
    }

    // MARK: what a run is set up to do

    /// Everything besides the model file that the memory of a run depends on.
    public struct Settings {
        /// KV cache positions.
        public var context: Int
        public var keyType: GGMLType
        public var valueType: GGMLType
        /// Prompt tokens per forward step (ModelOptions.batchSize).
        public var batch: Int
        /// Threads of the pool, the caller included.
        public var threads: Int
        /// Sequences with a KV cache each (`puna batch --parallel`).
        public var sequences: Int
        /// Rows of logits one evaluation returns (1, or the whole batch for perplexity/logits).
        public var logitRows: Int
        /// LoRA adapters to load.
        public var adapters: [AdapterFootprint]
        /// Fold the adapters into the weights at load (`--merge-lora`) instead of applying them per token.
        public var mergeAdapters: Bool
        /// Layers whose keys and values live on a Vulkan device (`useVulkan`; 0 on the CPU): every
        /// sequence's cache gets its own device copy of their rows (VulkanKVCache), and their rows
        /// in the host cache are allocated but never written (so never resident).
        public var gpuLayers: Int = 0
        /// Whether that device's memory is the host's RAM (an integrated GPU, lavapipe): then the
        /// device caches count against the budget; a discrete GPU's are in its own memory.
        public var gpuMemoryIsHost: Bool = true

        public init(context: Int, keyType: GGMLType = .f16, valueType: GGMLType? = nil, batch: Int = 256, threads: Int = 1,
                    sequences: Int = 1, logitRows: Int = 1, adapters: [AdapterFootprint] = [], mergeAdapters: Bool = false) {
            self.context = context
            self.keyType = keyType
            self.valueType = valueType ?? keyType
            self.batch = batch
            self.threads = threads
            self.sequences = sequences
            self.logitRows = logitRows
            self.adapters = adapters
            self.mergeAdapters = mergeAdapters
        }
    }

    /// What a LoRA adapter adds: A (and B where the LoRA kernels do not take its type) stays in the
    /// mapped adapter file; B of every other linear pair is transposed into owned memory when the
    /// adapter is applied per token (LoRAWeights.prepareTransposedB), and its mapped pages dropped.
    public struct AdapterFootprint {
        public var name: String
        /// Bytes of the factors read through the mapping on every token.
        public var mappedBytes: Int
        /// Bytes of the transposed copies of B (owned; tiles of 64 outputs, padded).
        public var ownedBytes: Int
        /// Largest rank of its pairs.
        public var rank: Int
        /// GGUF names of the base tensors it updates.
        public var targets: [String]
        /// PEFT adapters keep a row-order table for the Q and K outputs (LoRAWeights.outputRows).
        public var reordersRotaryRows: Bool
        /// Type of the A and B factors (F32, F16 or BF16; quantized ones in GGUF LoRAs).
        public var factorType: GGMLType

        public init(name: String, mappedBytes: Int, ownedBytes: Int = 0, rank: Int, targets: [String], reordersRotaryRows: Bool,
                    factorType: GGMLType = .f16) {
            self.name = name
            self.mappedBytes = mappedBytes
            self.ownedBytes = ownedBytes
            self.rank = rank
            self.targets = targets
            self.reordersRotaryRows = reordersRotaryRows
            self.factorType = factorType
        }

        public init(_ adapter: LoRAAdapter) {
            var owned = 0, transposedSources = 0
            for w in adapter.weights.values where w.usesLoRAKernel {
                owned += w.transposedBytes
                transposedSources += w.b.byteCount
            }
            self.init(name: adapter.name, mappedBytes: adapter.tensorBytes - transposedSources, ownedBytes: owned, rank: adapter.rank,
                      targets: adapter.targets, reordersRotaryRows: adapter.format == .peft,
                      factorType: adapter.weights.values.first?.a.type ?? .f16)
        }

        /// Whether puna_lora_apply / puna_lora_matmul_many1 compute its linear pairs.
        var usesLoRAKernels: Bool { puna_lora_supports(Int32(factorType.rawValue)) != 0 }
    }

    /// One weight matrix as the estimate needs it.
    struct Matrix {
        let name: String
        let type: GGMLType
        let rows: Int
        let cols: Int
        let bytes: Int
        /// What a merge makes of it: a copy in its own type, or F16 for a bitsandbytes matrix.
        var mergedBytes: Int { type.isBitsAndBytes ? MemoryEstimate.product(rows, cols, 2) : bytes }
    }

    // MARK: entry points

    /// Estimate for a model file before loading it: `gguf` only has its header parsed.
    public static func llama(gguf: GGUFFile, config: ModelConfig, settings: Settings) -> MemoryEstimate {
        var matrices: [String: Matrix] = [:]
        for t in gguf.tensors where t.shape.count >= 2 {
            let bytes = t.type.isBitsAndBytes ? gguf.bitsAndBytes?.bytes[t.name] ?? t.byteCount : t.byteCount
            matrices[t.name] = Matrix(name: t.name, type: t.type, rows: t.rowCount, cols: t.rowLength, bytes: bytes)
        }
        if matrices["output.weight"] == nil, let embedding = matrices["token_embd.weight"] {
            // Tied: the output head reads the embedding's bytes.
            matrices["output.weight"] = Matrix(name: "output.weight", type: embedding.type, rows: embedding.rows,
                                               cols: embedding.cols, bytes: embedding.bytes)
        }
        return llama(config: config, fileBytes: gguf.fileBytes, matrices: matrices, settings: settings)
    }

    /// Estimate for a model file whose tensors are all of one type `weightType` (when only the
    /// hyperparameters are known).
    public static func llama(config c: ModelConfig, weightBytes: Int, weightType: GGMLType = .q8_0, settings: Settings) -> MemoryEstimate {
        var matrices: [String: Matrix] = [:]
        func add(_ name: String, _ rows: Int, _ cols: Int) {
            matrices[name] = Matrix(name: name, type: weightType, rows: rows, cols: cols, bytes: weightType.rowBytes(cols).map { product($0, rows) } ?? 0)
        }
        let e = c.embeddingLength, qd = c.queryDimension, kv = c.kvDimension, ff = c.feedForwardLength
        add("token_embd.weight", c.vocabSize, e)
        add("output.weight", c.vocabSize, e)
        for l in 0..<c.blockCount {
            let p = "blk.\(l)."
            add(p + "attn_q.weight", qd, e); add(p + "attn_k.weight", kv, e); add(p + "attn_v.weight", kv, e)
            add(p + "attn_output.weight", e, qd); add(p + "ffn_gate.weight", ff, e); add(p + "ffn_up.weight", ff, e)
            add(p + "ffn_down.weight", e, ff)
        }
        return llama(config: c, fileBytes: weightBytes, matrices: matrices, settings: settings)
    }

    /// The original signature: mapped weights, KV cache of `context` positions, activations for a
    /// prompt batch of `batch` tokens, and per-thread buffers (tensor types unknown: q8_0 assumed).
    public static func llama(config c: ModelConfig, weightBytes: Int, context: Int, cacheType: GGMLType = .f16,
                             batch: Int = 512, threads: Int = 4) -> MemoryEstimate {
        llama(config: c, weightBytes: weightBytes, settings: Settings(context: context, keyType: cacheType, batch: batch, threads: threads))
    }

    // MARK: the model

    /// Bytes of the program itself (code and data of puna, the Swift runtime and libc, as resident
    /// after start-up; measured) and of each thread's stack as used.
    static let programBytes = 21 << 19  // 10.5 MiB
    static let stackBytesPerThread = 128 << 10
    /// Tokenizer tables and the GGUF metadata kept with the model, per vocabulary entry (measured:
    /// about 210 bytes with LLaMA's 32000 pieces), and the sampler's per-entry arrays.
    static let tokenizerBytesPerEntry = 224
    static let samplerBytesPerEntry = 40

    static func llama(config c: ModelConfig, fileBytes: Int, matrices: [String: Matrix], settings s: Settings) -> MemoryEstimate {
        var e = MemoryEstimate()
        // (A context of 0: not known yet, the batch is the bound.)
        let n = max(1, s.context > 0 ? min(s.batch, s.context) : s.batch)
        // evaluate returns the logits of every token it was given (or of the last): up to the
        // context; the output matrix sees at most one step's worth at a time.
        let allLogitRows = max(1, min(s.logitRows, max(s.context, 1)))
        let logitRows = min(allLogitRows, n)
        let threads = max(1, s.threads)
        let embd = c.embeddingLength, kvd = c.kvDimension, ff = c.feedForwardLength, vocab = c.vocabSize

        // Which matrices the adapters touch, and what merging them costs.
        var adapterTargets: [String: Int] = [:]   // target → sum of ranks
        for a in s.adapters { for t in a.targets { adapterTargets[t, default: 0] += a.rank } }
        var mergedBytes = 0, mappedMergedBytes = 0, mergedCount = 0, mergeWork = 0, f16Copies = 0
        if s.mergeAdapters {
            for (target, k) in adapterTargets {
                guard let m = matrices[target] else { continue }
                mergedBytes = sum(mergedBytes, m.mergedBytes)
                mappedMergedBytes = sum(mappedMergedBytes, m.bytes)
                if m.type.isBitsAndBytes { f16Copies += 1 }
                mergedCount += 1
                // Merge.swift: ΔW's two f32 factors, and transcodeRows' buffers for ~2^18 weights.
                let chunk = max(1, min(m.rows, (1 << 18) / max(m.cols, 1)))
                let rowBytes = m.type.rowBytes(m.cols) ?? product(m.cols, 4)
                let work = sum(product(4, sum(m.rows, m.cols), k), product(4, sum(product(2, chunk, m.cols), m.cols)), product(chunk, rowBytes))
                mergeWork = max(mergeWork, work)
            }
        }

        // 1. weights
        if mergedCount > 0 {
            e.add("weights", "model file, memory-mapped (file-backed), less the \(mergedCount) merged tensors", fileBytes - mappedMergedBytes)
            let copies = f16Copies > 0 ? ", \(f16Copies) of them F16 copies of bitsandbytes matrices" : ""
            e.add("merged_weights", "merged tensors (owned copies, \(mergedCount) matrices\(copies))", mergedBytes)
            e.add("merge_work", "merge work buffers (at load)", mergeWork)
        } else {
            e.add("weights", "model file, memory-mapped (file-backed)", fileBytes)
        }
        if !s.mergeAdapters {
            for a in s.adapters {
                var tables = 0
                if a.reordersRotaryRows {
                    for t in a.targets where t.hasSuffix(".attn_q.weight") || t.hasSuffix(".attn_k.weight") {
                        tables = sum(tables, product(8, matrices[t]?.rows ?? 0))
                    }
                }
                let copies = a.ownedBytes > 0 ? "; B transposed into owned memory, \(formatBytes(a.ownedBytes))" : ""
                e.add("adapters", "LoRA adapter \(a.name) (memory-mapped, rank \(a.rank), \(a.targets.count) matrices\(copies))",
                      sum(a.mappedBytes, a.ownedBytes, tables))
            }
        }

        // 2. KV cache: K and V rows of every layer for every position (KVCache).
        let keyRow = s.keyType.rowBytes(kvd) ?? product(kvd, 2)
        let valueRow = s.valueType.rowBytes(kvd) ?? product(kvd, 2)
        // Local (sliding-window) layers keep a ring of rows instead of the whole context.
        let rows = c.kvRowsTotal(context: s.context, step: s.batch)
        // Layers on a Vulkan device keep their rows in device buffers, one set per sequence
        // (VulkanKVCache: the host cache's rows and format); the host cache's rows of those layers
        // are never written.
        let gpuLayers = min(max(s.gpuLayers, 0), c.blockCount)
        var gpuRows = 0
        for l in 0..<gpuLayers { gpuRows = sum(gpuRows, c.kvRows(layer: l, context: s.context, step: s.batch)) }
        let kvBytes = product(s.sequences, rows - gpuRows, sum(keyRow, valueRow))
        let types = s.keyType == s.valueType ? s.keyType.name : "K \(s.keyType.name) + V \(s.valueType.name)"
        let seqs = s.sequences > 1 ? ", \(s.sequences) sequences" : ""
        let rings = c.localLayerCount > 0 ? ", sliding-window layers keep \(c.kvRingRows(context: s.context, step: s.batch) ?? s.context) rows each" : ""
        let onHost = gpuLayers > 0 ? ", the \(c.blockCount - gpuLayers) CPU layers" : ""
        e.add("kv_cache", "KV cache (\(types), \(s.context) positions\(seqs)\(rings)\(onHost))", kvBytes)
        if gpuLayers > 0 && s.gpuMemoryIsHost {
            e.add("gpu_kv_cache", "KV cache on the Vulkan device (\(gpuLayers) layers\(seqs); device memory is host memory)",
                  product(s.sequences, gpuRows, sum(keyRow, valueRow)))
        }

        // 3. activations of one forward step of n tokens (LanguageModel.forwardLayers): x, xb
        // [n][embd]; q, att [n][q_dim]; k, v [n][kvd]; gate, up [n][ff]; a fused matrix's output
        // before its split ([n][q_dim + 2 kvd] or [n][2 ff]) when the model has one; the rows going
        // through the output norm [logit rows][embd]; the logits evaluate returns, and the adapters'
        // buffers (LoRA.swift): A·x and B·(A·x) of the widest matrix that goes through puna_matmul
        // (embedding pairs, quantized factors; the LoRA kernels need none), row lists and scales.
        let qd = c.queryDimension
        var fusedWidth = 0
        if matrices.keys.contains(where: { $0.hasSuffix(".attn_qkv.weight") }) { fusedWidth = sum(qd, product(2, kvd)) }
        if c.feedForward != .gelu, !matrices.keys.contains(where: { $0.hasSuffix(".ffn_gate.weight") }) { fusedWidth = max(fusedWidth, product(2, ff)) }
        let ffnBuffers = c.feedForward == .gelu ? 1 : 2   // GELU without gate writes only the gate buffer
        var activations = sum(product(4, n, sum(product(2, embd), product(2, qd), product(2, kvd), product(ffnBuffers, ff), fusedWidth)),
                              product(4, logitRows, embd), product(4, allLogitRows, vocab))
        if !s.mergeAdapters && !adapterTargets.isEmpty {
            var widest = 0
            for a in s.adapters {
                for target in a.targets where target == "token_embd.weight" || !a.usesLoRAKernels {
                    let rows = target == "token_embd.weight" ? embd : (matrices[target]?.rows ?? 0)
                    widest = max(widest, sum(adapterTargets[target] ?? 0, rows))
                }
            }
            activations = sum(activations, product(4, n, widest), product(16, n, s.adapters.count))
        }
        e.add("activations", "activations (batch \(n))", activations)

        // 4. the thread pool's buffers, which grow to the largest request and stay: the quantized
        // activations of one matmul (puna_pool_buffer), and per-thread scratch for attention scores
        // (one float per position) or for rows the reference kernel decodes (puna_pool_scratch).
        // Which kernel serves a type is this CPU's choice (ops.c dispatch).
        var quantized = 0, scratchFloats = s.context
        for m in matrices.values where m.name != "token_embd.weight" {
            let tokens = m.name == "output.weight" ? logitRows : n
            if usesReferenceKernel(m.type) {
                if m.type != .f32 { scratchFloats = max(scratchFloats, referenceScratchFloats(cols: m.cols)) }
            } else if let perToken = quantizedActivationBytes(type: m.type, cols: m.cols) {
                quantized = max(quantized, product(perToken, tokens))
            }
        }
        if !s.mergeAdapters && !s.adapters.isEmpty {
            var maxRank = 0
            for a in s.adapters {
                maxRank = max(maxRank, a.rank)
                // Factors through puna_matmul: A (cols = the matrix's inputs) and B (cols = the rank).
                for t in a.targets where t == "token_embd.weight" || !a.usesLoRAKernels {
                    guard usesReferenceKernel(a.factorType) && a.factorType != .f32, let m = matrices[t] else { continue }
                    let cols = t == "token_embd.weight" ? a.rank : max(m.cols, a.rank)
                    scratchFloats = max(scratchFloats, referenceScratchFloats(cols: cols))
                }
            }
            // The LoRA kernels keep A·x in the pool's scratch for a step's tokens, spread over the
            // threads (lora.c); one token's A·x of every pair of Q, K and V (or gate and up) follows
            // the quantized activations in the pool's buffer (ops.c puna_lora_matmul_many1).
            let sumRank = adapterTargets.values.max() ?? 0
            scratchFloats = max(scratchFloats, sum(product(n, maxRank), threads - 1) / threads)
            quantized = sum(quantized, 64, product(12, sumRank))
        }
        let quantizedBytes = quantized == 0 ? 0 : roundUp(max(quantized, 64), 4096)
        let scratchBytes = product(4, threads, roundUp(max(scratchFloats, 16), 16))
        e.add("thread_buffers", "thread pool buffers (\(threads) thread\(threads == 1 ? "" : "s"): quantized activations, scores)",
              sum(quantizedBytes, scratchBytes))

        // 5. tables the model keeps in Swift: norm weights decoded to f32, RoPE factors, the
        // tokenizer and GGUF metadata, the sampler's arrays.
        // (At most: biases of Q, K, V and per-head Q/K norms where the architecture has them, both
        // sets of LongRoPE factors.)
        let perLayerExtras = sum(qd, product(2, kvd), product(2, c.headDimension))
        let norms = product(4, sum(product(sum(product(2, c.blockCount), 1), embd), product(c.blockCount, perLayerExtras),
                                   product(3, c.ropeDimensionCount / 2)))
        e.add("tables", "norms, tokenizer, sampler", sum(norms, product(vocab, tokenizerBytesPerEntry + samplerBytesPerEntry)))

        // 6. the program: code, libraries, thread stacks.
        e.add("program", "program (code, libraries, \(threads) thread stack\(threads == 1 ? "" : "s"))",
              sum(programBytes, product(threads, stackBytesPerThread)))
        return e
    }

    /// Bytes one token's activations take once quantized for a matmul against `type` weights, from
    /// the layout ops.c uses (make_act_layout, with its padding); nil for types multiplied with f32
    /// activations.
    static func quantizedActivationBytes(type: GGMLType, cols: Int) -> Int? {
        // Past 2^40 columns the layout's own arithmetic would overflow: no such row fits anywhere.
        guard cols < 1 << 40 else { return saturated }
        let bytes = puna_matmul_activation_bytes(Int32(type.rawValue), Int64(cols))
        return bytes > 0 ? Int(bytes) : nil
    }

    /// Whether puna_matmul multiplies `type` with the portable reference kernel on this CPU (it
    /// decodes rows to f32 scratch) rather than a kernel family (which quantizes the activations).
    static func usesReferenceKernel(_ type: GGMLType) -> Bool {
        guard let name = puna_matmul_kernel_name(Int32(type.rawValue)) else { return true }
        return String(cString: name) == "reference"
    }

    /// Floats per thread the reference matmul decodes rows into (ops.c: about 256 KiB of rows,
    /// at most 32, a multiple of 4).
    static func referenceScratchFloats(cols: Int) -> Int {
        var group = min((256 * 1024) / max(product(cols, 4), 1), 32)
        group -= group % 4
        return product(max(group, 4), cols)
    }

    static func roundUp(_ n: Int, _ multiple: Int) -> Int { sum(n, multiple - 1) / multiple * multiple }

    // MARK: budget

    /// Parse a memory size: bytes, or a number with a binary suffix K, M, G, T (also KiB, MB, …:
    /// all binary), e.g. "4.5G", "4500M", "4718592K". nil when it is not a size.
    public static func parseSize(_ text: String) -> Int? {
        var whole = 0.0, fraction = 0.0, scale = 1.0, sawDigit = false, inFraction = false
        var bytes = Array(text.utf8)[...]
        while let b = bytes.first, (b >= 48 && b <= 57) || (b == 46 && !inFraction) {
            if b == 46 {
                inFraction = true
            } else {
                sawDigit = true
                let d = Double(b - 48)
                if inFraction { scale /= 10; fraction += d * scale } else { whole = whole * 10 + d }
            }
            bytes = bytes.dropFirst()
        }
        guard sawDigit else { return nil }
        // The unit, ASCII case-folded (no Unicode tables in the Embedded build).
        var unit = bytes.map { $0 >= 97 && $0 <= 122 ? $0 - 32 : $0 }
        if unit.count >= 2 && unit.suffix(2) == [73, 66] { unit.removeLast(2) }       // "IB"
        else if unit.last == 66 { unit.removeLast() }                                // "B"
        let multiplier: Double
        switch unit {
        case []: multiplier = 1
        case [75]: multiplier = 1024                                                 // K
        case [77]: multiplier = 1024 * 1024                                          // M
        case [71]: multiplier = 1024 * 1024 * 1024                                   // G
        case [84]: multiplier = 1024 * 1024 * 1024 * 1024                            // T
        default: return nil
        }
        let value = (whole + fraction) * multiplier
        guard value.isFinite, value < 9.0e18 else { return nil }
        return Int(value)
    }

    /// Concrete changes that make a run fit in `budget` bytes: each line a flag change and the
    /// total it gives. `estimate` recomputes the estimate for changed settings;
    /// `cacheTypes` lists the KV cache types the build supports.
    public static func advice(settings s: Settings, budget: Int, cacheTypes: [GGMLType],
                              estimate: (Settings) -> MemoryEstimate) -> [String] {
        var lines: [String] = []
        func fits(_ t: Settings) -> Bool { estimate(t).totalBytes <= budget }
        func total(_ t: Settings) -> String { formatBytes(estimate(t).totalBytes) }
        /// Largest context that fits with settings `t` (nil when not even 16 positions do).
        func largestContext(_ t: Settings) -> Int? {
            var t = t
            t.context = 16
            guard fits(t) else { return nil }
            var lo = 16, hi = s.context
            while lo < hi {
                let mid = (lo + hi + 1) / 2
                t.context = mid
                if fits(t) { lo = mid } else { hi = mid - 1 }
            }
            // A round number reads better than an exact one.
            return lo >= 512 ? lo / 256 * 256 : lo
        }

        let base = estimate(s)
        if let c = largestContext(s), c < s.context {
            var t = s
            t.context = c
            lines.append("-c \(c): the largest context that fits (total \(total(t)))")
        }
        // A smaller cache type, smallest first.
        let current = s.keyType.rowBytes(64).map { $0 + (s.valueType.rowBytes(64) ?? 0) } ?? 0
        for type in cacheTypes.sorted(by: { ($0.rowBytes(64) ?? 0) < ($1.rowBytes(64) ?? 0) }) {
            guard let row = type.rowBytes(64), 2 * row < current else { continue }
            var t = s
            t.keyType = type
            t.valueType = type
            let kv = estimate(t).bytes("kv_cache")
            if fits(t) {
                lines.append("-ctk \(type.name) -ctv \(type.name): KV cache \(formatBytes(kv)) instead of \(formatBytes(base.bytes("kv_cache"))) (total \(total(t)))")
            } else if let c = largestContext(t), c < s.context {
                t.context = c
                lines.append("-ctk \(type.name) -ctv \(type.name) -c \(c): total \(total(t))")
            }
            break
        }
        if !s.adapters.isEmpty {
            var t = s
            t.mergeAdapters.toggle()
            if estimate(t).totalBytes < base.totalBytes {
                let change = s.mergeAdapters ? "without --merge-lora" : "--merge-lora"
                let what = s.mergeAdapters ? "adapters applied per token from their mapped files" : "adapters folded into the weights"
                if fits(t) {
                    lines.append("\(change): \(what) (total \(total(t)))")
                } else if let c = largestContext(t), c < s.context {
                    t.context = c
                    lines.append("\(change) -c \(c): \(what) (total \(total(t)))")
                }
            }
        }
        if s.batch > 32 {
            var t = s
            t.batch = 32
            if fits(t) { lines.append("-b 32: smaller prompt steps (total \(total(t)))") }
        }
        if s.threads > 1 {
            var t = s
            t.threads = 1
            if fits(t) { lines.append("-t 1: fewer thread buffers (total \(total(t)))") }
        }
        let fixed = base.bytes("weights") + base.bytes("merged_weights") + base.bytes("adapters")
        if fixed > budget {
            lines.append("the weights alone take \(formatBytes(fixed)): use a smaller quantization or a smaller model")
        } else if lines.isEmpty {
            lines.append("raise the budget (--mem) or free memory: nothing else makes this run fit")
        }
        return lines
    }
}

extension LanguageModel {
    /// Bytes of the weight matrices merged adapters have replaced with owned copies.
    public var mergedWeightBytes: Int {
        var bytes = 0
        for m in namedMatrices where m.ownedWeights != nil { bytes += m.rowBytes * m.rows }
        return bytes
    }

    /// Sets the settings' GPU fields from the backend this model runs on (`useVulkan`): how many
    /// layers keep their KV rows on the device, and whether its memory is the host's.
    public func applyBackend(to settings: inout MemoryEstimate.Settings) {
        settings.gpuLayers = vulkan?.gpuLayerCount ?? 0
        settings.gpuMemoryIsHost = vulkan?.sharesHostMemory ?? true
    }

    /// The estimate for this loaded model with its adapters (active or merged), a KV cache of
    /// `context` positions and the model's thread count and batch size.
    public func memoryEstimate(context: Int, keyType: GGMLType = .f16, valueType: GGMLType? = nil,
                               sequences: Int = 1, logitRows: Int = 1) -> MemoryEstimate {
        var settings = MemoryEstimate.Settings(context: context, keyType: keyType, valueType: valueType, batch: batchSize,
                                               threads: threads, sequences: sequences, logitRows: logitRows)
        settings.adapters = activeAdapters.entries.map { MemoryEstimate.AdapterFootprint($0.adapter) }
        applyBackend(to: &settings)
        var estimate = MemoryEstimate.llama(gguf: gguf, config: config, settings: settings)
        let merged = mergedWeightBytes
        if merged > 0 {
            // Adapters merged at load: their tensors are owned now, the rest stays mapped.
            var adjusted = MemoryEstimate()
            for item in estimate.items {
                if item.key == "weights" {
                    adjusted.add("weights", "model file, memory-mapped (file-backed), less the merged tensors", item.bytes - merged)
                    adjusted.add("merged_weights", "merged tensors (owned copies)", merged)
                } else {
                    adjusted.add(item.key, item.name, item.bytes)
                }
            }
            estimate = adjusted
        }
        return estimate
    }
}

// MARK: - mmap discipline

extension LanguageModel {
    /// madvise at load. The matrices are read front to back on every token: WILLNEED asks the
    /// kernel to start reading them, one request per file or shard (a request per tensor cost
    /// ~2 ms each on a 7B folder). The token embedding is read one row per token, so it gets
    /// RANDOM instead (no read-ahead around a row, no pages charged for rows never used), unless
    /// the output head shares its bytes. During generation the hints stay as they are:
    /// SEQUENTIAL would let the kernel drop pages right after use (they are needed again for the
    /// next token), RANDOM would turn re-reads of evicted weights into single-page reads.
    func adviseForLoading() {
        for r in readAheadRanges() {
            gguf.files[r.source].advise(offset: gguf.dataOffsets[r.source] + r.start, count: r.end - r.start, .willNeed)
        }
        if let e = rowReadEmbedding { gguf.advise(e, .random) }
    }

    /// The token embedding when it is read one row per token (the output head has its own tensor).
    var rowReadEmbedding: GGUFTensorInfo? {
        gguf.tensorInfo("output.weight") != nil ? gguf.tensorInfo("token_embd.weight") : nil
    }

    /// What adviseForLoading reads ahead, as tensor offsets per file: each file (GGUF, or shard of a
    /// Hugging Face folder) from its first tensor to its last (bitsandbytes companions between them
    /// included: they are read too), less rowReadEmbedding.
    @_spi(Testing) public func readAheadRanges() -> [(source: Int, start: Int, end: Int)] {
        let embedding = rowReadEmbedding
        var ranges: [(source: Int, start: Int, end: Int)] = []
        for source in gguf.files.indices {
            let inFile = gguf.tensors.filter { $0.source == source && $0.name != embedding?.name }
            guard let lo = inFile.map({ $0.offset }).min(), let hi = inFile.map({ $0.offset + $0.byteCount }).max() else { continue }
            var pieces = [(lo, hi)]
            if let e = embedding, e.source == source { pieces = [(lo, min(hi, e.offset)), (max(lo, e.offset + e.byteCount), hi)] }
            for (start, end) in pieces where end > start { ranges.append((source, start, end)) }
        }
        return ranges
    }

    /// After a merge: the mapped bytes of the replaced matrices are never read again, so their
    /// pages leave this process (DONTNEED) and become the first the kernel reclaims.
    public func releaseReplacedWeights() {
        for m in namedMatrices where m.ownedWeights != nil {
            // A tied output head's original bytes are the embedding's, still in use unless it was merged too.
            if m === output, gguf.tensorInfo("output.weight") == nil, tokenEmbedding.ownedWeights == nil { continue }
            let name = m === output && gguf.tensorInfo("output.weight") == nil ? "token_embd.weight" : m.name
            guard let t = gguf.tensorInfo(name) else { continue }
            gguf.advise(t, .dontNeed)
        }
    }
}

/// "1.23 GiB" style text of a byte count.
public func formatBytes(_ bytes: Int) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var value = Double(bytes)
    var unit = 0
    while value >= 1024 && unit < units.count - 1 {
        value /= 1024
        unit += 1
    }
    if unit == 0 { return "\(bytes) B" }
    let scaled = Int((value * 100).rounded())
    let frac = scaled % 100
    return "\(scaled / 100).\(frac < 10 ? "0" : "")\(frac) \(units[unit])"
}
