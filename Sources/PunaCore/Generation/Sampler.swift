import CPuna

/// Sampling settings; the defaults are llama.cpp's classic ones (repeat penalty 1.1 over the last
/// 64 tokens, top-k 40, top-p 0.95, min-p 0.05, temperature 0.8).
public struct SamplerSettings: Equatable {
    /// <= 0 picks greedily: the highest logit, the lowest id on ties.
    public var temperature: Float
    /// Keep the k most likely tokens; 0 (or >= the vocabulary) = off.
    public var topK: Int
    /// Keep the smallest set of most likely tokens whose probability reaches p; 1 = off.
    public var topP: Float
    /// Drop tokens less likely than minP times the most likely one; 0 = off.
    public var minP: Float
    /// Divide positive logits (multiply negative ones) of recently seen tokens; 1 = off.
    public var repeatPenalty: Float
    /// How many of the last accepted tokens the penalty looks at; 0 = off, -1 = all since reset.
    public var repeatLastN: Int
    /// Seed of the sampler's own PRNG: the same seed gives the same tokens on every platform.
    public var seed: UInt64
    /// OpenAI's penalties, over the tokens generated so far (not the prompt): each token's logit
    /// loses frequencyPenalty × its count plus presencePenalty once it has appeared; 0 = off.
    public var frequencyPenalty: Float
    public var presencePenalty: Float

    public init(temperature: Float = 0.8, topK: Int = 40, topP: Float = 0.95, minP: Float = 0.05,
                repeatPenalty: Float = 1.1, repeatLastN: Int = 64, seed: UInt64 = 0,
                frequencyPenalty: Float = 0, presencePenalty: Float = 0) {
        self.temperature = temperature
        self.topK = topK
        self.topP = topP
        self.minP = minP
        self.repeatPenalty = repeatPenalty
        self.repeatLastN = repeatLastN
        self.seed = seed
        self.frequencyPenalty = frequencyPenalty
        self.presencePenalty = presencePenalty
    }

    /// Argmax, no penalty.
    public static var greedy: SamplerSettings { SamplerSettings(temperature: 0, repeatPenalty: 1) }
}

/// xoshiro256** (Blackman and Vigna), seeded through splitmix64 so that any 64-bit seed, 0
/// included, gives a well-mixed state. Pure integer arithmetic, so the stream is identical on
/// every platform.
public struct Xoshiro256StarStar: RandomNumberGenerator {
    private var s0: UInt64, s1: UInt64, s2: UInt64, s3: UInt64

    public init(seed: UInt64) {
        var x = seed
        func splitmix() -> UInt64 {
            x &+= 0x9E37_79B9_7F4A_7C15
            var z = x
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        s0 = splitmix(); s1 = splitmix(); s2 = splitmix(); s3 = splitmix()
    }

    public mutating func next() -> UInt64 {
        let result = rotl(s1 &* 5, 7) &* 9
        let t = s1 << 17
        s2 ^= s0
        s3 ^= s1
        s1 ^= s2
        s0 ^= s3
        s2 ^= t
        s3 = rotl(s3, 45)
        return result
    }

    /// Uniform in [0, 1) with 53 random bits.
    public mutating func nextUnitDouble() -> Double {
        Double(next() >> 11) * (1.0 / 9_007_199_254_740_992.0)
    }

    private func rotl(_ x: UInt64, _ k: UInt64) -> UInt64 { (x << k) | (x >> (64 - k)) }
}

/// One token still in the running, with its (penalised, later temperature-scaled) logit and,
/// once computed, its probability.
public struct SamplerCandidate: Equatable {
    public var id: Int32
    public var logit: Float
    public var probability: Float
}

/// Picks the next token from a row of logits. The chain and its semantics follow llama.cpp's
/// default sampler: repetition penalty → top-k → top-p → min-p → temperature → softmax → draw.
/// The candidate, mark and history buffers are kept between calls, so sampling a token does not
/// allocate once they have grown to size.
public struct Sampler {
    public let settings: SamplerSettings
    private var rng: Xoshiro256StarStar
    /// Accepted tokens, oldest first; trimmed to the penalty window now and then.
    private var history: [Int32] = []
    private var candidates: [SamplerCandidate] = []
    /// Per-token stamp marking "already penalised in this call", so each distinct token in the
    /// window is penalised once without clearing a vocabulary-sized array every call.
    private var marks: [UInt32] = []
    private var stamp: UInt32 = 0
    /// Logits overwritten by the penalty, put back before `sample` returns.
    private var saved: [(index: Int, logit: Float)] = []
    /// Contiguous floats for the softmax kernel.
    private var scratch: [Float] = []
    /// The best few hundred candidates, when top-p runs without top-k.
    private var top: [SamplerCandidate] = []
    /// Generated tokens and how often each appeared, for the frequency and presence penalties
    /// (first-appearance order, so the penalty walks them in a fixed order).
    private var generatedCounts: [Int32: Int] = [:]
    private var generatedOrder: [Int32] = []

    public init(_ settings: SamplerSettings) {
        self.settings = settings
        self.rng = Xoshiro256StarStar(seed: settings.seed)
    }

    private var penaltyIsOn: Bool { settings.repeatPenalty != 1 && settings.repeatLastN != 0 }
    private var openAIPenaltyIsOn: Bool { settings.frequencyPenalty != 0 || settings.presencePenalty != 0 }

    /// Record a token for the repetition penalty; `generated` ones (not the prompt's) also count
    /// for the frequency and presence penalties.
    public mutating func accept(_ token: Int32, generated: Bool) {
        if generated && openAIPenaltyIsOn {
            if let n = generatedCounts[token] {
                generatedCounts[token] = n + 1
            } else {
                generatedCounts[token] = 1
                generatedOrder.append(token)
            }
        }
        accept(token)
    }

    /// Record a token (from the prompt or generated) for the repetition penalty.
    public mutating func accept(_ token: Int32) {
        guard penaltyIsOn else { return }
        history.append(token)
        let window = settings.repeatLastN
        // Drop old tokens in batches of `window`, so the cost per token stays constant.
        if window > 0 && history.count >= 2 * window + 16 { history.removeFirst(history.count - window) }
    }

    /// Forget the accepted tokens and restart the random stream from the seed.
    public mutating func reset() {
        history.removeAll(keepingCapacity: true)
        generatedCounts.removeAll()
        generatedOrder.removeAll(keepingCapacity: true)
        rng = Xoshiro256StarStar(seed: settings.seed)
    }

    /// The next token. The logits are used in place and left as they were found. Exactly one
    /// random number is drawn per call unless the temperature is <= 0 (greedy draws none), so
    /// the random stream stays aligned with the token count.
    public mutating func sample(_ logits: UnsafeMutableBufferPointer<Float>) -> Int32 {
        precondition(logits.count > 0, "sampling from an empty vocabulary")
        if settings.temperature <= 0 {
            applyPenalty(logits)
            defer { restorePenalised(logits) }
            return Sampler.argmax(logits)
        }
        prepareCandidates(logits)
        let u = rng.nextUnitDouble()
        return draw(u)
    }

    /// The distribution `sample` draws from for these logits: the surviving candidates with their
    /// final probabilities (summing to 1), in the order the draw walks them. Draws nothing.
    public mutating func distribution(_ logits: UnsafeMutableBufferPointer<Float>) -> [SamplerCandidate] {
        precondition(logits.count > 0, "sampling from an empty vocabulary")
        if settings.temperature <= 0 {
            applyPenalty(logits)
            defer { restorePenalised(logits) }
            let best = Sampler.argmax(logits)
            return [SamplerCandidate(id: best, logit: logits[Int(best)], probability: 1)]
        }
        prepareCandidates(logits)
        return candidates
    }

    // MARK: the chain

    /// Put back the logits the penalty changed.
    private mutating func restorePenalised(_ logits: UnsafeMutableBufferPointer<Float>) {
        // Backwards: a logit both penalties changed was saved twice, the original first.
        for entry in saved.reversed() { logits[entry.index] = entry.logit }
        saved.removeAll(keepingCapacity: true)
    }

    /// llama.cpp's repetition penalty: each distinct token among the last N accepted has its
    /// logit divided by the penalty when positive and multiplied when zero or negative, so it
    /// always becomes less likely (for a penalty above 1). Then OpenAI's frequency and presence
    /// penalties, in the order llama.cpp applies them.
    private mutating func applyPenalty(_ logits: UnsafeMutableBufferPointer<Float>) {
        applyRepeatPenalty(logits)
        guard openAIPenaltyIsOn else { return }
        let vocab = logits.count
        for token in generatedOrder {
            let i = Int(token)
            guard i >= 0 && i < vocab, let count = generatedCounts[token] else { continue }
            saved.append((index: i, logit: logits[i]))
            logits[i] -= settings.frequencyPenalty * Float(count) + settings.presencePenalty
        }
    }

    private mutating func applyRepeatPenalty(_ logits: UnsafeMutableBufferPointer<Float>) {
        guard penaltyIsOn, !history.isEmpty else { return }
        let vocab = logits.count
        if marks.count < vocab { marks = [UInt32](repeating: 0, count: vocab); stamp = 0 }
        stamp &+= 1
        if stamp == 0 {  // wrapped: old stamps could collide, start over
            for i in 0..<marks.count { marks[i] = 0 }
            stamp = 1
        }
        let penalty = settings.repeatPenalty
        let window = settings.repeatLastN < 0 ? history.count : min(settings.repeatLastN, history.count)
        for token in history[(history.count - window)...] {
            let i = Int(token)
            guard i >= 0 && i < vocab && marks[i] != stamp else { continue }
            marks[i] = stamp
            let logit = logits[i]
            saved.append((index: i, logit: logit))
            logits[i] = logit <= 0 ? logit * penalty : logit / penalty
        }
    }

    /// Highest logit, lowest id on ties; NaN never wins.
    static func argmax(_ logits: UnsafeMutableBufferPointer<Float>) -> Int32 {
        var best = -1
        var bestLogit = -Float.infinity
        for i in 0..<logits.count where logits[i] > bestLogit || (best < 0 && !logits[i].isNaN) {
            best = i
            bestLogit = logits[i]
        }
        return Int32(best < 0 ? 0 : best)
    }

    /// `a` ranks below `b`: smaller logit, or equal logit and larger id.
    @inline(__always)
    static func ranksBelow(_ a: SamplerCandidate, _ b: SamplerCandidate) -> Bool {
        a.logit < b.logit || (a.logit == b.logit && a.id > b.id)
    }

    /// Leaves `candidates` holding the tokens that survive penalty, top-k, top-p and min-p, with
    /// temperature-scaled logits and normalised probabilities.
    private mutating func prepareCandidates(_ logits: UnsafeMutableBufferPointer<Float>) {
        let vocab = logits.count
        var sorted = false
        applyPenalty(logits)
        let k = settings.topK
        if k > 0 && k < vocab {
            candidates.removeAll(keepingCapacity: true)
            selectTopK(logits, k)
            sorted = true
        } else {
            resizeCandidates(vocab)
            candidates.withUnsafeMutableBufferPointer { c in
                for i in 0..<vocab {
                    let l = logits[i]
                    c[i] = SamplerCandidate(id: Int32(i), logit: l.isNaN ? -.infinity : l, probability: 0)
                }
            }
        }
        restorePenalised(logits)

        var best = 0  // index of the most likely candidate
        if !sorted {
            candidates.withUnsafeBufferPointer { c in
                for i in 1..<c.count where Sampler.ranksBelow(c[best], c[i]) { best = i }
            }
        }
        guard candidates[best].logit > -Float.infinity else {
            // Every token is masked out: fall back to the lowest id rather than divide 0 by 0.
            candidates.removeSubrange(1...)
            candidates[0].probability = 1
            return
        }

        let topPIsOn = settings.topP < 1
        if topPIsOn || settings.minP > 0 {
            // Both filters read the softmax over everything that survived top-k (temperature 1).
            softmaxOfCandidates(temperature: 1)
        }

        // min-p keeps p_i >= minP * p_max (llama.cpp: logit_i >= max + log(minP)). Both min-p
        // and top-p keep a prefix of the candidates sorted by probability, and top-p measures
        // mass with the probabilities computed above, so applying min-p first keeps the same
        // set as llama.cpp's order while top-p then sorts only the (usually few) survivors
        // instead of the whole vocabulary.
        if settings.minP > 0 {
            let threshold = settings.minP * candidates[best].probability
            var kept = 0
            candidates.withUnsafeMutableBufferPointer { c in
                for i in 0..<c.count where c[i].probability >= threshold {
                    c[kept] = c[i]
                    kept += 1
                }
                if kept == 0 {  // minP > 1: only the best token can stay
                    c[0] = c[best]
                    kept = 1
                }
            }
            candidates.removeSubrange(kept...)
        }

        if topPIsOn {
            if !sorted { sortForTopP() }
            var cumulative: Float = 0
            for i in 0..<candidates.count {
                cumulative += candidates[i].probability
                if cumulative >= settings.topP {
                    candidates.removeSubrange((i + 1)...)
                    break
                }
            }
        }

        // Temperature, then the softmax the draw uses.
        softmaxOfCandidates(temperature: settings.temperature)
    }

    /// Make `candidates` hold exactly n entries, reusing its storage.
    private mutating func resizeCandidates(_ n: Int) {
        if candidates.count > n {
            candidates.removeSubrange(n...)
        } else if candidates.count < n {
            candidates.append(contentsOf: repeatElement(SamplerCandidate(id: 0, logit: 0, probability: 0), count: n - candidates.count))
        }
    }

    /// Sort the candidates by probability for top-p. With many candidates (top-k off) the kept
    /// set is nearly always within the best few hundred, so those are selected and sorted first
    /// and the full sort runs only when their mass falls short of p.
    private mutating func sortForTopP() {
        let prefix = 256
        if candidates.count > 4 * prefix {
            top.removeAll(keepingCapacity: true)
            candidates.withUnsafeBufferPointer { c in Sampler.selectBest(prefix, from: c, into: &top) }
            var mass: Float = 0
            for c in top { mass += c.probability }
            if mass >= settings.topP {
                swap(&candidates, &top)
                return
            }
        }
        candidates.sort { Sampler.ranksBelow($1, $0) }
    }

    /// Divide the candidates' logits by the temperature and set their probabilities to the
    /// softmax of the result, computed by CPuna's kernel.
    private mutating func softmaxOfCandidates(temperature: Float) {
        let n = candidates.count
        if scratch.count < n { scratch = [Float](repeating: 0, count: n) }
        candidates.withUnsafeMutableBufferPointer { c in
            scratch.withUnsafeMutableBufferPointer { x in
                for i in 0..<n {
                    if temperature != 1 { c[i].logit /= temperature }
                    x[i] = c[i].logit
                }
                puna_softmax(x.baseAddress!, Int64(n))
                for i in 0..<n { c[i].probability = x[i] }
            }
        }
    }

    /// The k best of `source` into `out`, sorted best first (heap selection, as in selectTopK).
    private static func selectBest(_ k: Int, from source: UnsafeBufferPointer<SamplerCandidate>,
                                   into out: inout [SamplerCandidate]) {
        out.append(contentsOf: source[0..<k])
        out.withUnsafeMutableBufferPointer { heap in
            var i = k / 2 - 1
            while i >= 0 { siftDown(heap, i); i -= 1 }
            for j in k..<source.count where ranksBelow(heap[0], source[j]) {
                heap[0] = source[j]
                siftDown(heap, 0)
            }
        }
        out.sort { ranksBelow($1, $0) }
    }

    /// Partial selection of the k best: a min-heap of size k whose root is the weakest kept token.
    /// Most logits lose to the root at a single comparison, so this is O(V) in practice and
    /// O(V log k) at worst; only the k winners get sorted.
    private mutating func selectTopK(_ logits: UnsafeMutableBufferPointer<Float>, _ k: Int) {
        for i in 0..<k {
            let l = logits[i]
            candidates.append(SamplerCandidate(id: Int32(i), logit: l.isNaN ? -.infinity : l, probability: 0))
        }
        candidates.withUnsafeMutableBufferPointer { heap in
            var i = k / 2 - 1
            while i >= 0 { Sampler.siftDown(heap, i); i -= 1 }
            // Ids rise through the scan, so a later token with the root's logit ranks below it
            // and is skipped: ties keep the lowest ids. NaN fails the comparison and is skipped.
            for id in k..<logits.count where logits[id] > heap[0].logit {
                heap[0] = SamplerCandidate(id: Int32(id), logit: logits[id], probability: 0)
                Sampler.siftDown(heap, 0)
            }
        }
        candidates.sort { Sampler.ranksBelow($1, $0) }
    }

    private static func siftDown(_ heap: UnsafeMutableBufferPointer<SamplerCandidate>, _ start: Int) {
        var parent = start
        let n = heap.count
        while true {
            var weakest = parent
            let left = 2 * parent + 1, right = left + 1
            if left < n && ranksBelow(heap[left], heap[weakest]) { weakest = left }
            if right < n && ranksBelow(heap[right], heap[weakest]) { weakest = right }
            if weakest == parent { return }
            heap.swapAt(parent, weakest)
            parent = weakest
        }
    }

    /// Walk the candidates until the running probability passes u. The strict comparison means
    /// a zero-probability token is never chosen.
    private func draw(_ u: Double) -> Int32 {
        var running: Double = 0
        var lastPossible = candidates[0].id
        for c in candidates where c.probability > 0 {
            running += Double(c.probability)
            lastPossible = c.id
            if running > u { return c.id }
        }
        return lastPossible  // rounding left the sum just under u
    }
}
