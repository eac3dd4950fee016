import CPuna

/// Why generation ended.
public enum FinishReason: String {
    case eos          // the model produced end-of-sequence
    case length       // the token budget (-n) ran out
    case stop         // a stop string appeared
    case contextFull  // the KV cache is full
}

/// Settings of one generation.
public struct GenerationOptions {
    /// Tokens to generate at most; < 0 means until EOS or a full context.
    public var maxTokens: Int = 128
    public var sampler = SamplerSettings()
    /// Generation stops before any of these strings; they are not part of the output.
    public var stopStrings: [String] = []
    public var stopAtEOS = true

    public init(maxTokens: Int = 128, sampler: SamplerSettings = SamplerSettings(), stopStrings: [String] = [], stopAtEOS: Bool = true) {
        self.maxTokens = maxTokens
        self.sampler = sampler
        self.stopStrings = stopStrings
        self.stopAtEOS = stopAtEOS
    }
}

/// One step of generation: the token and the text that may be shown now. Text is held back while it
/// could still turn into a stop string or is an incomplete UTF-8 character, so `text` can be empty;
/// the last element (id -1) flushes what was held back when generation ends.
public struct GeneratedToken {
    public let id: Int32
    public let text: String
}

/// Generates tokens as an iterator: `for step in generator { print(step.text) }`.
/// The prompt is evaluated by `init` (so its errors surface there); each `next()` samples one token
/// and evaluates it lazily on the following call.
public final class Generator: Sequence, IteratorProtocol {
    public let model: LanguageModel
    public let cache: KVCache
    public let options: GenerationOptions
    public private(set) var finishReason: FinishReason? = nil
    public private(set) var tokens: [Int32] = []   // generated so far (without the prompt)
    public let promptTokenCount: Int
    public private(set) var promptNanoseconds: Int64 = 0
    public private(set) var generationNanoseconds: Int64 = 0

    private var sampler: Sampler
    private var logits: [Float]
    private var toEvaluate: Int32? = nil
    private var stream: TextStreamDecoder
    private var held: [UInt8] = []      // decoded text kept back for stop-string matching
    private var decodedBytes: [Int] = [] // total decoded bytes after each generated token
    private var releasedBytes = 0       // bytes handed out as text so far
    /// Generated tokens whose text lies wholly before a stop string (all of them otherwise): a chat
    /// keeps this many in the cache and drops the stop string's tokens.
    public private(set) var keptTokenCount = 0
    private let stops: [[UInt8]]

    /// Evaluate `prompt` (appended to whatever `cache` already holds) and get ready to sample.
    public init(model: LanguageModel, cache: KVCache, prompt: [Int32], options: GenerationOptions) throws(PunaError) {
        self.model = model
        self.cache = cache
        self.options = options
        promptTokenCount = prompt.count
        sampler = Sampler(options.sampler)
        // The repetition penalty looks at the prompt too, as llama.cpp's does.
        for t in prompt { sampler.accept(t) }
        stops = options.stopStrings.filter { !$0.isEmpty }.map { Array($0.utf8) }
        stream = TextStreamDecoder(tokenizer: model.tokenizer)
        let start = puna_now_ns()
        logits = try model.evaluate(prompt, cache: cache)
        promptNanoseconds = puna_now_ns() - start
    }

    public func next() -> GeneratedToken? {
        if finishReason != nil { return flush() }
        let start = puna_now_ns()
        defer { generationNanoseconds += puna_now_ns() - start }
        if let last = toEvaluate {
            toEvaluate = nil
            if cache.count >= cache.capacity { return finish(.contextFull) }
            do throws(PunaError) {
                logits = try model.evaluate([last], cache: cache)
            } catch {
                return finish(.contextFull)
            }
        }
        if options.maxTokens >= 0 && tokens.count >= options.maxTokens { return finish(.length) }
        let id = logits.withUnsafeMutableBufferPointer { sampler.sample($0) }
        sampler.accept(id)
        if options.stopAtEOS && model.tokenizer.isEndOfGeneration(id) { return finish(.eos) }
        tokens.append(id)
        toEvaluate = id

        held.append(contentsOf: stream.append(id).utf8)
        decodedBytes.append(releasedBytes + held.count + stream.pendingByteCount)
        keptTokenCount = tokens.count
        if let cut = firstStop(in: held) {
            let text = String(decoding: held[0..<cut], as: UTF8.self)
            releasedBytes += cut
            held = []
            finishReason = .stop
            keptTokenCount = decodedBytes.prefix { $0 <= releasedBytes }.count
            return GeneratedToken(id: id, text: text)
        }
        let keep = heldSuffixLength(held)
        let text = String(decoding: held[0..<(held.count - keep)], as: UTF8.self)
        releasedBytes += held.count - keep
        held.removeFirst(held.count - keep)
        return GeneratedToken(id: id, text: text)
    }

    /// Tokens per second of the prompt and of generation.
    public var promptTokensPerSecond: Double { rate(promptTokenCount, promptNanoseconds) }
    public var generationTokensPerSecond: Double { rate(tokens.count, generationNanoseconds) }

    private func rate(_ n: Int, _ ns: Int64) -> Double { ns > 0 ? Double(n) * 1e9 / Double(ns) : 0 }

    private func finish(_ reason: FinishReason) -> GeneratedToken? {
        finishReason = reason
        return flush()
    }

    /// Release held-back text once generation has ended (stop strings can no longer complete).
    private func flush() -> GeneratedToken? {
        held.append(contentsOf: stream.flush().utf8)
        guard !held.isEmpty else { return nil }
        let text = String(decoding: held, as: UTF8.self)
        held = []
        return GeneratedToken(id: -1, text: text)
    }

    /// Byte offset of the earliest complete stop string in `bytes`.
    private func firstStop(in bytes: [UInt8]) -> Int? {
        var best: Int? = nil
        for s in stops where s.count <= bytes.count {
            var i = 0
            while i + s.count <= bytes.count {
                if bytes[i] == s[0] && Array(bytes[i..<i + s.count]) == s {
                    if best == nil || i < best! { best = i }
                    break
                }
                i += 1
            }
        }
        return best
    }

    /// Length of the longest suffix of `bytes` that is a proper prefix of some stop string.
    private func heldSuffixLength(_ bytes: [UInt8]) -> Int {
        var longest = 0
        for s in stops {
            var k = Swift.min(s.count - 1, bytes.count)
            while k > longest {
                if Array(bytes[(bytes.count - k)...]) == Array(s[0..<k]) { longest = k; break }
                k -= 1
            }
        }
        return longest
    }
}
