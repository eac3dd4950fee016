import CPuna

/// One request ready to run: prompt tokens and everything that decides its continuation.
public struct BatchJob {
    /// Identifies the job to the caller (the record's id key); the scheduler only passes it back.
    public var key: String
    public var promptTokens: [Int32]
    /// Tokens to generate at most; < 0 = until EOS or a full context.
    public var maxTokens: Int
    public var sampler: SamplerSettings
    /// Generation stops before the first of these strings; it is not part of the text.
    public var stopStrings: [String]
    public var stopAtEOS: Bool
    /// LoRA adapters of this job; nil runs the model with its active set (none, in `puna batch`).
    public var adapters: AdapterSet?

    public init(key: String, promptTokens: [Int32], maxTokens: Int, sampler: SamplerSettings,
                stopStrings: [String], stopAtEOS: Bool = true, adapters: AdapterSet? = nil) {
        self.adapters = adapters
        self.key = key
        self.promptTokens = promptTokens
        self.maxTokens = maxTokens
        self.sampler = sampler
        self.stopStrings = stopStrings
        self.stopAtEOS = stopAtEOS
    }
}

/// A finished job.
public struct BatchCompletion {
    public let key: String
    public let text: String
    public let finishReason: FinishReason
    public let promptTokens: Int
    public let generatedTokens: Int
    /// From admission into a slot to completion.
    public let nanoseconds: Int64
}

/// Continuous batching: up to `parallel` jobs in flight, each in a slot with its own KV cache.
/// Every `step()` runs one batched forward pass over all active slots (one token per decoding
/// slot, a prompt chunk per prefilling one) and samples for each slot whose logits came out. A
/// finished slot is free for `admit` before the next step.
///
/// Determinism: a job's tokens depend only on the job and the model. Its sampler is its own, seeded
/// from the job, and its logits do not depend on what shares the step (see `evaluateBatch`), so the
/// text is the same for any `parallel`, admission order, prompt chunking or thread count.
public final class BatchScheduler {
    public let model: LanguageModel
    public let parallel: Int
    public let contextLength: Int

    /// Totals since creation.
    public private(set) var promptTokensEvaluated = 0
    public private(set) var tokensGenerated = 0
    public private(set) var steps = 0
    /// Time and sampled tokens of the steps that carried no prompt rows: the decode rate.
    public private(set) var decodeNanoseconds: Int64 = 0
    public private(set) var decodeTokens = 0

    private var slots: [BatchSequence?]
    private let caches: [KVCache]

    public init(model: LanguageModel, parallel: Int, contextLength: Int, cacheType: GGMLType = .f16) throws(PunaError) {
        guard parallel >= 1 else { throw PunaError("--parallel must be at least 1") }
        self.model = model
        self.parallel = parallel
        self.contextLength = contextLength
        var caches: [KVCache] = []
        for _ in 0..<parallel { caches.append(try model.makeCache(contextLength: contextLength, type: cacheType)) }
        self.caches = caches
        slots = [BatchSequence?](repeating: nil, count: parallel)
    }

    public var activeCount: Int { slots.reduce(0) { $0 + ($1 == nil ? 0 : 1) } }
    public var hasFreeSlot: Bool { slots.contains { $0 == nil } }
    public var isIdle: Bool { activeCount == 0 }

    /// Why a job cannot run here, or nil when it can.
    public func problem(with job: BatchJob) -> String? {
        if job.promptTokens.isEmpty { return "the prompt is empty (no tokens)" }
        if job.promptTokens.count > contextLength {
            return "the prompt has \(job.promptTokens.count) tokens, more than the context length \(contextLength) (raise -c)"
        }
        for t in job.promptTokens where t < 0 || Int(t) >= model.config.vocabSize {
            return "token id \(t) is out of range (vocabulary has \(model.config.vocabSize) tokens)"
        }
        return nil
    }

    /// Put a job into a free slot. Jobs that `problem(with:)` refuses, or a call with no free
    /// slot, are programming errors.
    public func admit(_ job: BatchJob) throws(PunaError) {
        if let p = problem(with: job) { throw PunaError(p) }
        guard let i = slots.firstIndex(where: { $0 == nil }) else { throw PunaError("no free batch slot") }
        caches[i].reset()
        slots[i] = BatchSequence(job: job, cache: caches[i], tokenizer: model.tokenizer)
    }

    /// Drop a job (its client went away): its slot is free for the next `admit`. False when no
    /// active job has this key.
    @discardableResult
    public func cancel(key: String) -> Bool {
        guard let i = slots.firstIndex(where: { $0?.job.key == key }) else { return false }
        slots[i] = nil
        return true
    }

    /// The text a running job has produced so far that can no longer change: everything except
    /// the last bytes that might still begin a stop string, cut at a character boundary (for
    /// streaming). Nil when no active job has this key.
    public func settledText(key: String) -> [UInt8]? {
        guard let s = slots.first(where: { $0?.job.key == key }) ?? nil else { return nil }
        let holdBack = max(0, (s.stops.map { $0.count }.max() ?? 0) - 1)
        var end = max(0, s.text.count - holdBack)
        while end > 0 && end < s.text.count && (s.text[end] & 0xC0) == 0x80 { end -= 1 }
        return Array(s.text[..<end])
    }

    /// One forward step over every active slot; returns the jobs that finished in it, in slot order.
    public func step() throws(PunaError) -> [BatchCompletion] {
        var finished: [BatchCompletion] = []
        // Jobs that need no forward pass at all (max_tokens 0) finish at once.
        for i in 0..<slots.count {
            if let s = slots[i], s.job.maxTokens == 0 {
                finished.append(s.finish(.length))
                slots[i] = nil
            }
        }

        // Decoding slots first, one row each; prompt chunks fill the rest of the step's row budget.
        var slices: [BatchSlice] = []
        var members: [Int] = []
        var hasPromptRows = false
        for i in 0..<slots.count {
            guard let s = slots[i], let token = s.pendingToken else { continue }
            slices.append(BatchSlice(cache: s.cache, tokens: [token], wantsLogits: true, adapters: s.job.adapters))
            members.append(i)
        }
        var budget = max(model.batchSize, slices.count + 1) - slices.count
        for i in 0..<slots.count where budget > 0 {
            guard let s = slots[i], s.pendingToken == nil else { continue }
            let remaining = s.job.promptTokens.count - s.promptDone
            let n = min(remaining, budget)
            let chunk = Array(s.job.promptTokens[s.promptDone..<(s.promptDone + n)])
            slices.append(BatchSlice(cache: s.cache, tokens: chunk, wantsLogits: n == remaining, adapters: s.job.adapters))
            members.append(i)
            budget -= n
            hasPromptRows = true
        }
        guard !slices.isEmpty else { return finished }

        let start = puna_now_ns()
        try model.validateBatch(slices)
        let wanted = slices.reduce(0) { $0 + ($1.wantsLogits ? 1 : 0) }
        let vocab = model.config.vocabSize
        if logits.count < wanted * vocab { logits = [Float](repeating: 0, count: wanted * vocab) }
        try logits.withUnsafeMutableBufferPointer { (out: inout UnsafeMutableBufferPointer<Float>) throws(PunaError) in
            try model.forwardBatch(slices, logits: out.baseAddress!)
        }
        steps += 1

        var row = 0
        var sampled = 0
        for (slice, i) in zip(slices, members) {
            let s = slots[i]!
            if s.pendingToken != nil {
                s.pendingToken = nil
            } else {
                s.promptDone += slice.tokens.count
                promptTokensEvaluated += slice.tokens.count
            }
            guard slice.wantsLogits else { continue }
            let before = s.generated.count
            let reason = logits.withUnsafeMutableBufferPointer { all in
                s.advance(UnsafeMutableBufferPointer(rebasing: all[(row * vocab)..<((row + 1) * vocab)]))
            }
            row += 1
            sampled += s.generated.count - before
            if let reason {
                finished.append(s.finish(reason))
                slots[i] = nil
            }
        }
        tokensGenerated += sampled
        if !hasPromptRows {
            decodeNanoseconds += puna_now_ns() - start
            decodeTokens += sampled
        }
        return finished
    }

    /// Logits of one step, kept between steps so a step does not allocate them.
    private var logits: [Float] = []
}

/// The state of one job in a slot: sampler, generated tokens and their text.
final class BatchSequence {
    let job: BatchJob
    let cache: KVCache
    let startNs: Int64
    var sampler: Sampler
    var stream: TextStreamDecoder
    var promptDone = 0
    /// The last sampled token, to be evaluated in the next step.
    var pendingToken: Int32? = nil
    var generated: [Int32] = []
    var text: [UInt8] = []
    /// Bytes of `text` before the first stop string, once one appeared.
    var stopAt: Int? = nil
    let stops: [[UInt8]]

    init(job: BatchJob, cache: KVCache, tokenizer: Tokenizer) {
        self.job = job
        self.cache = cache
        startNs = puna_now_ns()
        sampler = Sampler(job.sampler)
        // The repetition penalty sees the prompt too, as in Generator (and llama.cpp).
        for t in job.promptTokens { sampler.accept(t) }
        stream = TextStreamDecoder(tokenizer: tokenizer)
        stops = job.stopStrings.filter { !$0.isEmpty }.map { Array($0.utf8) }
    }

    /// Sample from the logits of the last evaluated token. Returns why the job ended, or nil when
    /// the sampled token is to be evaluated next. Mirrors Generator's order of checks, so a job's
    /// text equals `puna run`'s with the same settings.
    func advance(_ logits: UnsafeMutableBufferPointer<Float>) -> FinishReason? {
        if job.maxTokens >= 0 && generated.count >= job.maxTokens { return .length }
        let id = sampler.sample(logits)
        sampler.accept(id, generated: true)
        if job.stopAtEOS && stream.tokenizer.isEndOfGeneration(id) { return .eos }
        generated.append(id)
        let before = text.count
        text.append(contentsOf: stream.append(id).utf8)
        if let cut = firstStop(from: before) {
            stopAt = cut
            return .stop
        }
        // Budget spent: no need to evaluate the last token.
        if job.maxTokens >= 0 && generated.count >= job.maxTokens { return .length }
        if cache.count >= cache.capacity { return .contextFull }
        pendingToken = id
        return nil
    }

    func finish(_ reason: FinishReason) -> BatchCompletion {
        var bytes = text
        if let stopAt {
            bytes.removeSubrange(stopAt...)
        } else {
            bytes.append(contentsOf: stream.flush().utf8)
        }
        return BatchCompletion(key: job.key, text: String(decoding: bytes, as: UTF8.self), finishReason: reason,
                               promptTokens: job.promptTokens.count, generatedTokens: generated.count,
                               nanoseconds: puna_now_ns() - startNs)
    }

    /// Earliest complete stop string in `text`. Only an occurrence ending in the bytes added since
    /// `before` can be new, so the search starts just early enough to catch one spanning the seam.
    private func firstStop(from before: Int) -> Int? {
        var best: Int? = nil
        for s in stops where s.count <= text.count {
            var i = max(0, before - s.count + 1)
            while i + s.count <= text.count {
                if text[i] == s[0] && text[i..<(i + s.count)].elementsEqual(s) {
                    if best == nil || i < best! { best = i }
                    break
                }
                i += 1
            }
        }
        return best
    }
}
