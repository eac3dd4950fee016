/// The SentencePiece-BPE tokenizer of LLaMA-family GGUF files (`tokenizer.ggml.model` = "llama"),
/// behaving like llama.cpp's SPM tokenizer token for token:
///
/// - encode: user-defined tokens (and, with `parseSpecial`, control and unknown tokens) are cut out
///   of the text first, longest first; every remaining text fragment that starts the input or
///   follows such a token gets one dummy space in front (when `add_space_prefix`), spaces become
///   U+2581 "▁", the fragment is split into UTF-8 characters, and adjacent symbols are merged pair by
///   pair, always taking the pair whose concatenation is the vocabulary piece of highest score (the
///   leftmost such pair on ties). Symbols left that are not pieces fall back to `<0xNN>` byte tokens.
/// - decode: control and unknown tokens print nothing (unless asked), byte tokens give their byte,
///   "▁" becomes a space, and one leading space of the very first token is dropped (the dummy
///   prefix); a leading control token such as BOS consumes that rule, exactly as llama.cpp does.
///
/// All text is handled as UTF-8 bytes: Swift `String` equality is Unicode canonical equivalence, which
/// would merge distinct vocabulary pieces (precomposed vs decomposed accents), so pieces are looked
/// up in a byte-keyed hash table instead of a `[String: Int32]`.
public final class Tokenizer {
    /// `tokenizer.ggml.token_type` values, as written by the GGUF converters.
    public enum TokenType: Int32 {
        case undefined = 0, normal = 1, unknown = 2, control = 3, userDefined = 4, unused = 5, byte = 6
    }

    public let vocabSize: Int
    public let bosID: Int32
    public let eosID: Int32
    public let unknownID: Int32
    public let paddingID: Int32?
    /// `tokenizer.ggml.add_bos_token` (default true): whether prompts normally start with BOS.
    public let addsBOS: Bool
    /// `tokenizer.ggml.add_eos_token` (default false).
    public let addsEOS: Bool
    /// `tokenizer.ggml.add_space_prefix` (default true): the SentencePiece dummy prefix.
    public let addsSpacePrefix: Bool
    /// The longest piece, in bytes. No token stands for more bytes of text than this ("▁" takes 3 bytes
    /// for a 1-byte space, `<0xNN>` 6 for one byte), so a text of n bytes needs at least
    /// n / maxPieceBytes tokens: enough to refuse a prompt that cannot fit before tokenizing it.
    public let maxPieceBytes: Int
    /// No piece of more than one byte holds a newline (LLaMA spells it `<0x0A>`): a newline then never
    /// merges with its neighbours, and text cut after one tokenizes to the same tokens as the whole.
    private let newlineSeparates: Bool

    private let pieces: PieceTable
    /// The BPE model ("gpt2", "gemma4"); nil for SentencePiece ("llama").
    private let bpe: BPEModel?
    /// `tokenizer.ggml.model`: "llama", "gpt2" or "gemma4".
    public let modelName: String
    /// The pre-tokenizer of a BPE vocabulary (`tokenizer.ggml.pre`, "default" when absent); nil for SPM.
    public let preTokenizerName: String?
    /// Tokens that end generation, ascending: EOS, `tokenizer.ggml.eot_token_id`,
    /// `tokenizer.ggml.eom_token_id`, and the pieces of `endOfGenerationTexts` the vocabulary has.
    public let endOfGenerationIDs: [Int32]

    /// Pieces that end a turn or the text in the chat formats llama.cpp knows (it stops on these too).
    public static let endOfGenerationTexts: [String] = [
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
        "<end_of_turn>", "<|endoftext|>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
        "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
        "<\u{FF5C}end\u{2581}of\u{2581}sentence\u{FF5C}>",
    ]
    private let scores: [Float]
    private let types: [TokenType]
    /// What each token prints in normal decoding (control/unknown/unused: nothing), flattened.
    private let printedBytes: [UInt8]
    private let printedOffsets: [Int32]
    /// Token of each byte value for byte fallback (`<0xNN>`, else the one-byte piece), -1 if none.
    private let byteTokens: [Int32]
    /// Tokens cut out of the text before merging, longest first (ties by id, so the order is
    /// reproducible): user-defined ones always, control and unknown ones too with `parseSpecial`.
    private let userDefinedTokens: [Int32]
    private let specialTokens: [Int32]

    public static let modelKey = "tokenizer.ggml.model"
    public static let tokensKey = "tokenizer.ggml.tokens"
    public static let scoresKey = "tokenizer.ggml.scores"
    public static let tokenTypeKey = "tokenizer.ggml.token_type"
    public static let preKey = "tokenizer.ggml.pre"

    public convenience init(gguf: GGUFFile) throws(PunaError) {
        try self.init(metadata: gguf.metadata, source: gguf.path)
    }

    /// Builds the tokenizer from GGUF metadata; `source` names the file in error messages.
    public init(metadata: [String: GGUFValue], source: String) throws(PunaError) {
        func fail(_ message: String) -> PunaError { PunaError("\(source): \(message)") }

        guard let modelValue = metadata[Tokenizer.modelKey] else {
            throw fail("missing \(Tokenizer.modelKey): the file has no tokenizer")
        }
        guard let model = modelValue.stringValue else {
            throw fail("\(Tokenizer.modelKey) must be a string, found \(modelValue.type.name)")
        }
        let isBPE: Bool
        switch model {
        case "llama": isBPE = false
        case "gpt2", "gemma4": isBPE = true
        default:
            throw fail("\(Tokenizer.modelKey) is '\(model)'; Puna supports 'llama' (SentencePiece BPE), 'gpt2' (byte-level BPE) and 'gemma4'")
        }
        // the pre-tokenizer: gemma4 has its own; an unknown name is refused, not guessed
        var preTokenizer: PreTokenizer? = nil
        if isBPE {
            var preName: String? = nil
            if model == "gemma4" {
                preName = "gemma4"
            } else if let preValue = metadata[Tokenizer.preKey] {
                guard let name = preValue.stringValue else {
                    throw fail("\(Tokenizer.preKey) must be a string, found \(preValue.type.name)")
                }
                preName = name
            }
            guard let pre = PreTokenizer.named(preName) else {
                throw fail("\(Tokenizer.preKey) is '\(preName ?? "")', a pre-tokenizer Puna does not know; supported: \(PreTokenizer.supportedNames.joined(separator: ", "))")
            }
            preTokenizer = pre
        }

        // tokens: array of strings
        guard let tokensValue = metadata[Tokenizer.tokensKey] else {
            throw fail("missing \(Tokenizer.tokensKey): the vocabulary is absent")
        }
        guard case .array(let tokensElement, let tokenValues) = tokensValue, tokensElement == .string else {
            throw fail("\(Tokenizer.tokensKey) must be an array of strings, found \(Tokenizer.describe(tokensValue))")
        }
        let n = tokenValues.count
        guard n > 0 else { throw fail("\(Tokenizer.tokensKey) is empty") }
        guard n < Int(Int32.max) else { throw fail("\(Tokenizer.tokensKey) has \(n) tokens, too many") }

        var texts: [[UInt8]] = []
        texts.reserveCapacity(n)
        for (i, v) in tokenValues.enumerated() {
            let bytes = v.stringBytes ?? []
            // llama.cpp renames empty pieces so they can never match text.
            texts.append(bytes.isEmpty ? Array("[EMPTY_\(i)]".utf8) : bytes)
        }

        // scores: optional, f32 or i32, one per token
        var scores = [Float](repeating: 0, count: n)
        if let scoresValue = metadata[Tokenizer.scoresKey] {
            guard case .array(let element, let values) = scoresValue, element == .float32 || element == .int32 else {
                throw fail("\(Tokenizer.scoresKey) must be an array of f32 or i32, found \(Tokenizer.describe(scoresValue))")
            }
            guard values.count == n else {
                throw fail("\(Tokenizer.scoresKey) has \(values.count) entries but \(Tokenizer.tokensKey) has \(n)")
            }
            for i in 0..<n { scores[i] = Float(values[i].doubleValue ?? 0) }
        }

        // token types: optional, i32, one per token; absent means all normal
        var types = [TokenType](repeating: .normal, count: n)
        if let typesValue = metadata[Tokenizer.tokenTypeKey] {
            guard case .array(let element, let values) = typesValue, element == .int32 else {
                throw fail("\(Tokenizer.tokenTypeKey) must be an array of i32, found \(Tokenizer.describe(typesValue))")
            }
            guard values.count == n else {
                throw fail("\(Tokenizer.tokenTypeKey) has \(values.count) entries but \(Tokenizer.tokensKey) has \(n)")
            }
            for i in 0..<n {
                let raw = Int32(values[i].intValue ?? -1)
                guard let t = TokenType(rawValue: raw) else {
                    throw fail("\(Tokenizer.tokenTypeKey)[\(i)] is \(raw), not a token type (0 to 6)")
                }
                types[i] = t
            }
        }

        // special ids: the SentencePiece defaults unless the file says otherwise
        func tokenID(_ key: String, default fallback: Int32?) throws(PunaError) -> Int32? {
            guard let value = metadata[key] else {
                guard let fallback else { return nil }
                guard Int(fallback) < n else {
                    throw fail("missing \(key), and the default id \(fallback) is outside the \(n)-token vocabulary")
                }
                return fallback
            }
            guard let id = value.intValue else { throw fail("\(key) must be an integer, found \(value.type.name)") }
            guard id >= 0, id < n else { throw fail("\(key) is \(id), outside the vocabulary of \(n) tokens") }
            return Int32(id)
        }
        func flag(_ key: String, default fallback: Bool) throws(PunaError) -> Bool {
            guard let value = metadata[key] else { return fallback }
            guard let b = value.boolValue else { throw fail("\(key) must be a bool, found \(value.type.name)") }
            return b
        }
        // llama.cpp's defaults: SentencePiece 1/2/0; byte-level BPE 11/11 (GPT-2's), no unknown token;
        // gemma4 none. A missing id is -1.
        let defaultBOS: Int32? = model == "llama" ? 1 : model == "gpt2" && n > 11 ? 11 : nil
        let defaultEOS: Int32? = model == "llama" ? 2 : model == "gpt2" && n > 11 ? 11 : nil
        bosID = try tokenID("tokenizer.ggml.bos_token_id", default: defaultBOS) ?? -1
        eosID = try tokenID("tokenizer.ggml.eos_token_id", default: defaultEOS) ?? -1
        unknownID = try tokenID("tokenizer.ggml.unknown_token_id", default: isBPE ? nil : 0) ?? -1
        paddingID = try tokenID("tokenizer.ggml.padding_token_id", default: nil)
        let eotID = try tokenID("tokenizer.ggml.eot_token_id", default: nil)
        let eomID = try tokenID("tokenizer.ggml.eom_token_id", default: nil)
        // llama3's pre-tokenizer implies a BOS unless the file says otherwise (as in llama.cpp)
        let llama3Pre = preTokenizer.map { ["llama3", "llama-v3", "llama-bpe", "falcon3"].contains($0.name) } ?? false
        addsBOS = try flag("tokenizer.ggml.add_bos_token", default: !isBPE || llama3Pre) && bosID >= 0
        addsEOS = try flag("tokenizer.ggml.add_eos_token", default: false) && eosID >= 0
        addsSpacePrefix = try flag("tokenizer.ggml.add_space_prefix", default: !isBPE)

        // lookup table; a repeated piece would make one of the ids unreachable (llama.cpp refuses it too)
        let table = PieceTable(texts)
        if let (first, second) = table.firstDuplicate {
            throw fail("\(Tokenizer.tokensKey) holds the piece '\(String(decoding: texts[first], as: UTF8.self))' twice (ids \(first) and \(second))")
        }

        // printed bytes per token and byte fallback table
        var printed: [UInt8] = []
        var printedOffsets: [Int32] = [0]
        printedOffsets.reserveCapacity(n + 1)
        for i in 0..<n {
            switch types[i] {
            case .normal where model == "gpt2":
                // byte-level: each character stands for one byte (a piece outside the alphabet prints as is;
                // one that is not even UTF-8 cannot come from a byte-level vocabulary)
                if let bytes = ByteLevel.decode(texts[i][...]) {
                    printed.append(contentsOf: bytes)
                } else {
                    guard ByteLevel.isValidUTF8(texts[i]) else {
                        throw fail("\(Tokenizer.tokensKey)[\(i)] is not valid UTF-8, which no byte-level BPE piece can be")
                    }
                    printed.append(contentsOf: texts[i])
                }
            case .normal:
                Tokenizer.appendUnescaped(texts[i], to: &printed)
            case .userDefined:
                printed.append(contentsOf: texts[i])
            case .byte:
                guard let b = Tokenizer.byteValue(ofPiece: texts[i]) else {
                    throw fail("\(Tokenizer.tokensKey)[\(i)] '\(String(decoding: texts[i], as: UTF8.self))' has byte type in \(Tokenizer.tokenTypeKey) but is not of the form <0xNN>")
                }
                printed.append(b)
            case .control, .unknown, .unused, .undefined:
                break
            }
            printedOffsets.append(Int32(printed.count))
        }
        var byteTokens = [Int32](repeating: -1, count: 256)
        for b in 0..<256 {
            let hex: [UInt8] = Array("0123456789ABCDEF".utf8)
            let name: [UInt8] = [0x3C, 0x30, 0x78, hex[b >> 4], hex[b & 15], 0x3E]  // "<0xNN>"
            var id = table.find(name)
            if id < 0 { id = table.find([UInt8(b)]) }
            byteTokens[b] = id
        }

        func longestFirst(_ wanted: (TokenType) -> Bool) -> [Int32] {
            var ids: [Int32] = []
            for i in 0..<n where wanted(types[i]) { ids.append(Int32(i)) }
            ids.sort { a, b in
                let la = texts[Int(a)].count, lb = texts[Int(b)].count
                return la != lb ? la > lb : a < b
            }
            return ids
        }

        // BPE merges (after the table, which they are checked against)
        if let preTokenizer {
            guard let mergesValue = metadata[BPEModel.mergesKey] else {
                throw fail("missing \(BPEModel.mergesKey): a '\(model)' tokenizer needs its merges")
            }
            guard case .array(let element, let merges) = mergesValue, element == .string else {
                throw fail("\(BPEModel.mergesKey) must be an array of strings, found \(Tokenizer.describe(mergesValue))")
            }
            self.bpe = try BPEModel(preTokenizer: preTokenizer, byteLevel: model == "gpt2",
                                    ignoreMerges: llama3Pre, merges: merges, pieces: table, source: source)
        } else {
            self.bpe = nil
        }
        self.modelName = model
        self.preTokenizerName = preTokenizer?.name

        // end of generation: eos, eot, eom, and the tokens llama.cpp stops on by their text
        var eog: [Int32] = []
        for id in [eosID, eotID ?? -1, eomID ?? -1] where id >= 0 && !eog.contains(id) { eog.append(id) }
        for text in Tokenizer.endOfGenerationTexts {
            let id = table.find(Array(text.utf8))
            if id >= 0 && !eog.contains(id) { eog.append(id) }
        }
        eog.sort()
        self.endOfGenerationIDs = eog

        self.vocabSize = n
        self.maxPieceBytes = texts.reduce(1) { max($0, $1.count) }
        // BPE pre-tokenizers may join a newline to its neighbours ("\\s*[\\r\\n]+", ".\\n\\n"): no cuts
        self.newlineSeparates = !isBPE && !texts.contains { $0.count > 1 && $0.contains(0x0A) }
        self.pieces = table
        self.scores = scores
        self.types = types
        self.printedBytes = printed
        self.printedOffsets = printedOffsets
        self.byteTokens = byteTokens
        self.userDefinedTokens = longestFirst { $0 == .userDefined }
        self.specialTokens = longestFirst { $0 == .userDefined || $0 == .control || $0 == .unknown }
    }

    // MARK: token facts

    public func isValid(_ id: Int32) -> Bool { id >= 0 && Int(id) < vocabSize }

    public func tokenType(_ id: Int32) -> TokenType { isValid(id) ? types[Int(id)] : .undefined }

    /// Control tokens (BOS, EOS, chat markers): not text, printed only on request.
    public func isControl(_ id: Int32) -> Bool { tokenType(id) == .control }

    /// Whether generation stops at this token (see `endOfGenerationIDs`).
    public func isEndOfGeneration(_ id: Int32) -> Bool {
        var lo = 0, hi = endOfGenerationIDs.count
        while lo < hi {
            let mid = (lo + hi) >> 1
            if endOfGenerationIDs[mid] < id { lo = mid + 1 } else { hi = mid }
        }
        return lo < endOfGenerationIDs.count && endOfGenerationIDs[lo] == id
    }

    public func score(_ id: Int32) -> Float { isValid(id) ? scores[Int(id)] : 0 }

    /// The vocabulary piece as stored (with "▁" for spaces, `<0xNN>` for byte tokens).
    public func piece(_ id: Int32) -> String {
        isValid(id) ? String(decoding: pieces.bytes(of: Int(id)), as: UTF8.self) : ""
    }

    /// The id of a vocabulary piece given exactly as stored (byte for byte), if there is one.
    public func id(ofPiece piece: String) -> Int32? {
        let id = pieces.find(Array(piece.utf8))
        return id >= 0 ? id : nil
    }

    /// The bytes this token contributes to decoded text: a byte token its byte, a normal piece its
    /// text with "▁" as space, a user-defined piece its raw text, control and unknown tokens nothing
    /// unless `renderSpecial` (then their raw text), unused or invalid ids nothing.
    public func pieceBytes(_ id: Int32, renderSpecial: Bool = false) -> [UInt8] {
        guard isValid(id) else { return [] }
        let i = Int(id)
        if renderSpecial, types[i] == .control || types[i] == .unknown {
            return Array(pieces.bytes(of: i))
        }
        return Array(printedBytes[Int(printedOffsets[i])..<Int(printedOffsets[i + 1])])
    }

    // MARK: encoding

    /// The most bytes of text that could still fit in `context` tokens (beyond, every token would
    /// have to cover more than the longest piece).
    public func maxBytes(fitting context: Int) -> Int {
        let (n, overflow) = max(context, 0).multipliedReportingOverflow(by: maxPieceBytes)
        return overflow ? Int.max : n
    }

    /// Refuses, before tokenizing, a text that cannot fit in `context` tokens whatever it holds.
    public func checkCanFit(textBytes: Int, context: Int, what: String) throws(PunaError) {
        guard textBytes <= maxBytes(fitting: context) else {
            throw PunaError("\(what) has \(textBytes) bytes: at least \(textBytes / maxPieceBytes) tokens (no token of this vocabulary spans more than \(maxPieceBytes) bytes), more than the context length \(context) (raise -c)")
        }
    }

    /// Tokenizes with the file's defaults for BOS and EOS.
    public func encode(_ text: String) -> [Int32] {
        encode(text, addBOS: addsBOS, addEOS: addsEOS)
    }

    /// Tokenizes `text`. `addBOS`/`addEOS` put the BOS/EOS token around it. With `parseSpecial`,
    /// text spelling a control token (say "</s>") becomes that token; otherwise it is plain text.
    public func encode(_ text: String, addBOS: Bool, addEOS: Bool = false, parseSpecial: Bool = false) -> [Int32] {
        encode(utf8: Array(text.utf8), addBOS: addBOS, addEOS: addEOS, parseSpecial: parseSpecial)
    }

    /// Tokenizes raw bytes (need not be valid UTF-8: stray bytes become byte tokens).
    public func encode(utf8 text: [UInt8], addBOS: Bool, addEOS: Bool = false, parseSpecial: Bool = false) -> [Int32] {
        var output: [Int32] = []
        output.reserveCapacity(text.count / 3 + 4)
        if addBOS && bosID >= 0 { output.append(bosID) }
        append(text, startsText: true, parseSpecial: parseSpecial, to: &output)
        if addEOS && eosID >= 0 { output.append(eosID) }
        return output
    }

    /// Tokenizes a long text (a perplexity corpus) window by window, each cut after a newline, so that
    /// the merge loop's working memory (tens of bytes per text byte) stays that of one window. The
    /// tokens equal `encode(utf8:addBOS:)`'s: where a newline can merge with its neighbours the text is
    /// taken whole.
    public func encodeLong(utf8 text: UnsafeBufferPointer<UInt8>, addBOS: Bool, window: Int = 1 << 20) -> [Int32] {
        var output: [Int32] = []
        output.reserveCapacity(text.count / 3 + 4)
        if addBOS && bosID >= 0 { output.append(bosID) }
        var start = 0
        while start < text.count {
            var end = text.count
            if newlineSeparates && text.count - start > max(window, 1) {
                // The last newline within the window ends it; a window without one runs to the next.
                var cut = start + max(window, 1)
                while cut > start && text[cut - 1] != 0x0A { cut -= 1 }
                if cut == start {
                    cut = start + max(window, 1)
                    while cut < text.count && text[cut - 1] != 0x0A { cut += 1 }
                }
                end = cut
            }
            append(Array(UnsafeBufferPointer(rebasing: text[start..<end])), startsText: start == 0, parseSpecial: false, to: &output)
            start = end
        }
        return output
    }

    /// Tokens of `text` appended to `output`. `startsText`: the text begins the input (its first
    /// fragment gets the dummy space); false for the later windows of `encodeLong`.
    private func append(_ text: [UInt8], startsText: Bool, parseSpecial: Bool, to output: inout [Int32]) {
        // A fragment that starts the text or follows a cut-out token gets the dummy space.
        var previousWasToken = startsText
        for fragment in partition(text, parseSpecial: parseSpecial) {
            switch fragment {
            case .token(let id):
                output.append(id)
                previousWasToken = true
            case .text(let range):
                if let bpe {
                    bpe.tokenize(text[range], pieces: pieces, into: &output)
                    previousWasToken = false
                    continue
                }
                MergeSession.tokenize(text[range], spacePrefix: addsSpacePrefix && previousWasToken,
                                 tokenizer: self, into: &output)
                previousWasToken = false
            }
        }
    }

    private enum Fragment {
        case text(Range<Int>)
        case token(Int32)
    }

    /// Cuts the special tokens out of the text: each token in turn (longest first) is searched in
    /// every text fragment left so far, and each occurrence splits that fragment.
    private func partition(_ text: [UInt8], parseSpecial: Bool) -> [Fragment] {
        if text.isEmpty { return [] }
        var fragments: [Fragment] = [.text(0..<text.count)]
        let cutOut = parseSpecial ? specialTokens : userDefinedTokens
        if cutOut.isEmpty { return fragments }
        text.withUnsafeBufferPointer { textBuffer in
            for id in cutOut {
                let needle = Array(pieces.bytes(of: Int(id)))
                var next: [Fragment] = []
                next.reserveCapacity(fragments.count + 2)
                for fragment in fragments {
                    guard case .text(var range) = fragment else {
                        next.append(fragment)
                        continue
                    }
                    while let match = Tokenizer.firstIndex(of: needle, in: textBuffer, range: range) {
                        if match > range.lowerBound { next.append(.text(range.lowerBound..<match)) }
                        next.append(.token(id))
                        range = (match + needle.count)..<range.upperBound
                    }
                    if !range.isEmpty { next.append(.text(range)) }
                }
                fragments = next
            }
        }
        return fragments
    }

    private static func firstIndex(of needle: [UInt8], in haystack: UnsafeBufferPointer<UInt8>,
                                   range: Range<Int>) -> Int? {
        let m = needle.count
        guard m > 0, range.count >= m else { return nil }
        let first = needle[0]
        var i = range.lowerBound
        let last = range.upperBound - m
        while i <= last {
            if haystack[i] == first {
                var j = 1
                while j < m && haystack[i + j] == needle[j] { j += 1 }
                if j == m { return i }
            }
            i += 1
        }
        return nil
    }

    /// Piece lookup for the merge loop.
    fileprivate func find(_ bytes: UnsafePointer<UInt8>, _ count: Int) -> Int32 {
        pieces.find(bytes, count)
    }

    fileprivate func scoreUnchecked(_ id: Int32) -> Float { scores[Int(id)] }

    fileprivate func byteToken(_ byte: UInt8) -> Int32 {
        let id = byteTokens[Int(byte)]
        return id >= 0 ? id : unknownID
    }

    // MARK: decoding

    /// Detokenizes like llama.cpp's `llama_detokenize`: with `removeSpecial`, a leading BOS (and a
    /// trailing EOS, when the file adds one) is dropped first; with the dummy space prefix on, the
    /// first remaining token loses one leading space. Control tokens print only with `renderSpecial`.
    /// Invalid UTF-8 (half a character at the end) becomes U+FFFD.
    public func decode(_ ids: [Int32], removeSpecial: Bool = false, renderSpecial: Bool = false) -> String {
        let bytes = decodeBytes(ids, removeSpecial: removeSpecial, renderSpecial: renderSpecial)
        return String(decoding: bytes, as: UTF8.self)
    }

    public func decodeBytes(_ ids: [Int32], removeSpecial: Bool = false, renderSpecial: Bool = false) -> [UInt8] {
        var start = 0
        var end = ids.count
        var stripSpace = addsSpacePrefix
        if removeSpecial && addsBOS && end > 0 && ids[0] == bosID {
            // llama.cpp keeps the space of the token after a removed BOS.
            stripSpace = false
            start = 1
        }
        if removeSpecial && addsEOS && end > start && ids[end - 1] == eosID { end -= 1 }
        var out: [UInt8] = []
        out.reserveCapacity((end - start) * 4)
        for k in start..<end {
            appendPiece(ids[k], renderSpecial: renderSpecial, stripLeadingSpace: stripSpace, to: &out)
            stripSpace = false
        }
        return out
    }

    /// Appends the token's bytes; `stripLeadingSpace` drops one leading space (the dummy prefix).
    func appendPiece(_ id: Int32, renderSpecial: Bool, stripLeadingSpace: Bool, to out: inout [UInt8]) {
        guard isValid(id) else { return }
        let i = Int(id)
        if renderSpecial, types[i] == .control || types[i] == .unknown {
            let raw = pieces.bytes(of: i)
            let skip = stripLeadingSpace && raw.first == 0x20 ? 1 : 0
            out.append(contentsOf: raw.dropFirst(skip))
            return
        }
        var lo = Int(printedOffsets[i])
        let hi = Int(printedOffsets[i + 1])
        if stripLeadingSpace && lo < hi && printedBytes[lo] == 0x20 { lo += 1 }
        out.append(contentsOf: printedBytes[lo..<hi])
    }

    // MARK: helpers

    private static func describe(_ value: GGUFValue) -> String {
        if case .array(let element, _) = value { return "an array of \(element.name)" }
        return value.type.name
    }

    /// "▁" (E2 96 81) back to a space.
    private static func appendUnescaped(_ text: [UInt8], to out: inout [UInt8]) {
        var i = 0
        while i < text.count {
            if i + 2 < text.count && text[i] == 0xE2 && text[i + 1] == 0x96 && text[i + 2] == 0x81 {
                out.append(0x20)
                i += 3
            } else {
                out.append(text[i])
                i += 1
            }
        }
    }

    /// The byte of a `<0xNN>` piece (hex digits of either case), nil for anything else.
    static func byteValue(ofPiece text: [UInt8]) -> UInt8? {
        guard text.count == 6, text[0] == 0x3C, text[1] == 0x30, text[2] == 0x78 || text[2] == 0x58,
              text[5] == 0x3E else { return nil }
        func hexDigit(_ c: UInt8) -> UInt8? {
            switch c {
            case 0x30...0x39: return c - 0x30
            case 0x41...0x46: return c - 0x41 + 10
            case 0x61...0x66: return c - 0x61 + 10
            default: return nil
            }
        }
        guard let hi = hexDigit(text[3]), let lo = hexDigit(text[4]) else { return nil }
        return hi << 4 | lo
    }
}

/// The BPE merge loop over one text fragment. Symbols are byte ranges of one buffer kept as a
/// doubly linked list; a merged pair is always contiguous in the buffer, so a candidate's text is
/// just a longer range and no string is ever built. Candidate pairs wait in a max-heap by
/// (score, leftmost); entries made stale by earlier merges are recognised by their byte size.
private enum MergeSession {
    static func tokenize(_ text: ArraySlice<UInt8>, spacePrefix: Bool, tokenizer: Tokenizer,
                         into output: inout [Int32]) {
        // escape: optional dummy space, then every space as "▁"
        var buffer: [UInt8] = []
        buffer.reserveCapacity(text.count + text.count / 2 + 3)
        if spacePrefix { buffer.append(contentsOf: [0xE2, 0x96, 0x81]) }
        for b in text {
            if b == 0x20 { buffer.append(contentsOf: [0xE2, 0x96, 0x81]) } else { buffer.append(b) }
        }

        // split into UTF-8 characters by the lead byte's length (continuation bytes stand alone)
        var start: [Int32] = []
        var length: [Int32] = []
        start.reserveCapacity(buffer.count)
        length.reserveCapacity(buffer.count)
        let total = buffer.count
        var offset = 0
        while offset < total {
            let lead = buffer[offset]
            let want = lead < 0xC0 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4
            let n = min(want, total - offset)
            start.append(Int32(offset))
            length.append(Int32(n))
            offset += n
        }
        let count = start.count
        if count == 0 { return }
        var prev = (0..<count).map { Int32($0) - 1 }
        var next = (0..<count).map { $0 + 1 < count ? Int32($0 + 1) : Int32(-1) }
        var heap = BigramHeap()

        buffer.withUnsafeBufferPointer { bytes in
            let base = bytes.baseAddress!
            func addPair(_ left: Int32, _ right: Int32) {
                if left < 0 || right < 0 { return }
                let size = length[Int(left)] + length[Int(right)]
                let id = tokenizer.find(base + Int(start[Int(left)]), Int(size))
                if id < 0 { return }
                heap.push(Bigram(score: tokenizer.scoreUnchecked(id), left: left, right: right, size: size))
            }

            for i in 1..<count { addPair(Int32(i - 1), Int32(i)) }

            while let top = heap.popMax() {
                let l = Int(top.left), r = Int(top.right)
                // stale: one side was absorbed or grew since this pair was queued
                if length[l] == 0 || length[r] == 0 || length[l] + length[r] != top.size { continue }
                length[l] += length[r]
                length[r] = 0
                next[l] = next[r]
                if next[r] >= 0 { prev[Int(next[r])] = top.left }
                addPair(prev[l], top.left)
                addPair(top.left, next[l])
            }

            // Every merge made a vocabulary piece, so a symbol is either a piece or one character
            // missing from the vocabulary, which falls back to its bytes.
            var i: Int32 = 0
            while i >= 0 {
                let s = Int(start[Int(i)]), n = Int(length[Int(i)])
                let id = tokenizer.find(base + s, n)
                if id >= 0 {
                    output.append(id)
                } else {
                    for k in s..<(s + n) { output.append(tokenizer.byteToken(base[k])) }
                }
                i = next[Int(i)]
            }
        }
    }
}

private struct Bigram {
    var score: Float
    var left: Int32
    var right: Int32
    var size: Int32

    /// Higher score first; on equal scores the leftmost pair.
    @inline(__always) func outranks(_ other: Bigram) -> Bool {
        score > other.score || (score == other.score && left < other.left)
    }
}

private struct BigramHeap {
    private var items: [Bigram] = []

    mutating func removeAll() { items.removeAll(keepingCapacity: true) }

    mutating func push(_ item: Bigram) {
        items.append(item)
        var child = items.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            if !items[child].outranks(items[parent]) { break }
            items.swapAt(child, parent)
            child = parent
        }
    }

    mutating func popMax() -> Bigram? {
        guard let last = items.popLast() else { return nil }
        if items.isEmpty { return last }
        let top = items[0]
        items[0] = last
        var parent = 0
        let n = items.count
        while true {
            let left = 2 * parent + 1
            if left >= n { break }
            var best = left
            if left + 1 < n && items[left + 1].outranks(items[left]) { best = left + 1 }
            if !items[best].outranks(items[parent]) { break }
            items.swapAt(best, parent)
            parent = best
        }
        return top
    }
}

/// Vocabulary pieces as bytes with an open-addressing hash index (FNV-1a, linear probing).
struct PieceTable {
    private let storage: [UInt8]
    private let offsets: [Int32]
    private let slots: [Int32]
    private let mask: Int
    let maxLength: Int
    /// The first pair of ids found spelling the same piece, if any.
    let firstDuplicate: (Int, Int)?

    init(_ texts: [[UInt8]]) {
        var storage: [UInt8] = []
        var offsets: [Int32] = [0]
        offsets.reserveCapacity(texts.count + 1)
        var maxLength = 0
        for t in texts {
            storage.append(contentsOf: t)
            offsets.append(Int32(storage.count))
            maxLength = max(maxLength, t.count)
        }
        var capacity = 16
        while capacity < texts.count * 2 { capacity <<= 1 }
        var slots = [Int32](repeating: -1, count: capacity)
        var duplicate: (Int, Int)? = nil
        storage.withUnsafeBufferPointer { all in
            for (id, t) in texts.enumerated() {
                let p = all.baseAddress! + Int(offsets[id])
                var slot = PieceTable.hash(p, t.count) & (capacity - 1)
                while slots[slot] >= 0 {
                    let other = Int(slots[slot])
                    let q = all.baseAddress! + Int(offsets[other])
                    if duplicate == nil && PieceTable.equal(p, t.count, q, Int(offsets[other + 1] - offsets[other])) {
                        duplicate = (other, id)
                    }
                    slot = (slot + 1) & (capacity - 1)
                }
                slots[slot] = Int32(id)
            }
        }
        self.storage = storage
        self.offsets = offsets
        self.slots = slots
        self.mask = capacity - 1
        self.maxLength = maxLength
        self.firstDuplicate = duplicate
    }

    func bytes(of id: Int) -> ArraySlice<UInt8> { storage[Int(offsets[id])..<Int(offsets[id + 1])] }

    func find(_ key: [UInt8]) -> Int32 {
        key.withUnsafeBufferPointer { k in
            guard let p = k.baseAddress else { return -1 }
            return find(p, k.count)
        }
    }

    func find(_ key: UnsafePointer<UInt8>, _ count: Int) -> Int32 {
        if count > maxLength || count == 0 { return -1 }
        return storage.withUnsafeBufferPointer { all -> Int32 in
            var slot = PieceTable.hash(key, count) & mask
            while true {
                let id = slots[slot]
                if id < 0 { return -1 }
                let lo = Int(offsets[Int(id)])
                if Int(offsets[Int(id) + 1]) - lo == count && PieceTable.equal(key, count, all.baseAddress! + lo, count) {
                    return id
                }
                slot = (slot + 1) & mask
            }
        }
    }

    @inline(__always) static func hash(_ p: UnsafePointer<UInt8>, _ n: Int) -> Int {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for i in 0..<n { h = (h ^ UInt64(p[i])) &* 0x0000_0100_0000_01b3 }
        return Int(truncatingIfNeeded: h ^ (h >> 29))
    }

    @inline(__always) static func equal(_ a: UnsafePointer<UInt8>, _ an: Int, _ b: UnsafePointer<UInt8>, _ bn: Int) -> Bool {
        if an != bn { return false }
        for i in 0..<an where a[i] != b[i] { return false }
        return true
    }
}
