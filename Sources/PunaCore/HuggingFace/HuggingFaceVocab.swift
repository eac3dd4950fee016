/// A Hugging Face folder's tokenizer as the `tokenizer.*` GGUF keys: from SentencePiece's
/// `tokenizer.model` (the `llama` model: pieces, scores, types) or from a byte-level BPE
/// `tokenizer.json` (the `gpt2` model: vocabulary, merges, and the pre-tokenizer named by its split
/// regex), then `tokenizer_config.json`'s flags and chat template.
struct HuggingFaceVocab {
    var model: String
    var pre: String? = nil
    var tokens: [String] = []
    var scores: [Float] = []
    var types: [Int32] = []
    var merges: [String] = []
    var bos: Int? = nil, eos: Int? = nil, unk: Int? = nil, eot: Int? = nil
    var addBOS: Bool
    var addEOS = false
    var addSpacePrefix: Bool? = nil
    var chatTemplate: String? = nil
    static let maxTokens = 1 << 22

    // MARK: tokenizer.model

    /// SentencePiece's ModelProto: field 1 the pieces (1 piece, 2 score, 3 type), field 2 the trainer
    /// spec (40-42 unk/bos/eos ids), field 3 the normalizer spec (3 add_dummy_prefix).
    init(sentencePiece file: String) throws(PunaError) {
        model = "llama"
        addBOS = true
        var tokens: [String] = [], scores: [Float] = [], types: [Int32] = []
        var ids: (unk: Int?, bos: Int?, eos: Int?) = (0, 1, 2)
        var dummyPrefix = true
        var specs = (trainer: false, normalizer: false)
        try withInputBytes(file, maxBytes: HuggingFaceFolder.maxJSONBytes, limitNote: "Puna's limit for tokenizer.model") { bytes throws(PunaError) in
            var top = ProtobufReader(bytes, file: file, what: "ModelProto")
            while let (field, wire) = try top.nextField() {
                switch (field, wire) {
                case (1, 2):
                    var piece = try top.message("a piece")
                    var text: String? = nil, score: Float = 0, type: Int32 = 1
                    while let (f, w) = try piece.nextField() {
                        switch (f, w) {
                        case (1, 2): text = try piece.string("a piece's text")
                        case (2, 5): score = Float(bitPattern: try piece.fixed32("a piece's score"))
                        case (3, 0):
                            let t = try piece.varint("a piece's type")
                            guard (1...6).contains(t) else { throw PunaError("\(file): piece \(tokens.count) has type \(t), not 1-6") }
                            type = Int32(t)
                        default: try piece.skip(w)
                        }
                    }
                    guard let text else { throw PunaError("\(file): piece \(tokens.count) has no text") }
                    guard tokens.count < HuggingFaceVocab.maxTokens else { throw PunaError("\(file): more than \(HuggingFaceVocab.maxTokens) pieces") }
                    tokens.append(text); scores.append(score.isFinite ? score : 0); types.append(type)
                case (2, 2):
                    specs.trainer = true
                    var spec = try top.message("the trainer spec")
                    while let (f, w) = try spec.nextField() {
                        switch (f, w) {
                        case (40, 0): ids.unk = spec.signed(try spec.varint("unk_id"))
                        case (41, 0): ids.bos = spec.signed(try spec.varint("bos_id"))
                        case (42, 0): ids.eos = spec.signed(try spec.varint("eos_id"))
                        default: try spec.skip(w)
                        }
                    }
                case (3, 2):
                    specs.normalizer = true
                    var spec = try top.message("the normalizer spec")
                    while let (f, w) = try spec.nextField() {
                        if f == 3, w == 0 { dummyPrefix = try spec.varint("add_dummy_prefix") != 0 } else { try spec.skip(w) }
                    }
                default: try top.skip(wire)
                }
            }
        }
        // Every SentencePiece model has both specs and one unknown piece; anything else is not one.
        guard !tokens.isEmpty, specs.trainer, specs.normalizer, types.filter({ $0 == 2 }).count == 1 else {
            throw PunaError("\(file): not a SentencePiece model (it needs pieces with one unknown piece, a trainer spec and a normalizer spec)")
        }
        self.tokens = tokens; self.scores = scores; self.types = types
        func valid(_ id: Int?) -> Int? { id.flatMap { $0 >= 0 && $0 < tokens.count ? $0 : nil } }
        unk = valid(ids.unk); bos = valid(ids.bos); eos = valid(ids.eos)
        addSpacePrefix = dummyPrefix
    }

    // MARK: tokenizer.json

    /// Split regexes of the byte-level BPE pre-tokenizers Puna knows, by llama.cpp's name for them.
    static let knownSplits: [(regex: String, pre: String)] = [
        ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+", "llama-bpe"),
        ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+", "qwen2"),
        (" ?[^(\\s|.,!?…。，、।۔،)]+", "bloom"),
    ]

    init(tokenizerJSON file: String) throws(PunaError) {
        model = "gpt2"
        addBOS = false
        let json = try HuggingFaceFolder.readJSON(file)
        let type = json["model"]?["type"]?.string ?? "?"
        guard type == "BPE" else {
            throw PunaError("\(file): model type '\(clipped(type))' is not supported (Puna reads byte-level BPE tokenizer.json, or tokenizer.model)")
        }
        pre = try HuggingFaceVocab.preTokenizerName(json["pre_tokenizer"] ?? .null, file: file)
        guard let vocab = json["model"]?["vocab"]?.object else { throw PunaError("\(file): model.vocab is not an object") }
        var byID: [String?] = []
        func place(_ text: String, _ id: Int, _ what: String) throws(PunaError) {
            guard id >= 0, id < HuggingFaceVocab.maxTokens else { throw PunaError("\(file): \(what) '\(clipped(text))' has id \(id), outside 0..<\(HuggingFaceVocab.maxTokens)") }
            while byID.count <= id { byID.append(nil) }
            if let other = byID[id], other != text { throw PunaError("\(file): id \(id) is both '\(clipped(other))' and '\(clipped(text))'") }
            byID[id] = text
        }
        for (text, value) in vocab {
            guard let id = value.int else { throw PunaError("\(file): vocab entry '\(clipped(text))' has no integer id") }
            try place(text, id, "token")
        }
        var special: [Int: Bool] = [:]
        for added in json["added_tokens"]?.array ?? [] {
            guard let id = added["id"]?.int, let text = added["content"]?.string else { throw PunaError("\(file): an added_tokens entry lacks id or content") }
            try place(text, id, "added token")
            special[id] = added["special"]?.bool ?? false
        }
        for (id, text) in byID.enumerated() {
            guard let text else { throw PunaError("\(file): no token has id \(id) (ids must run from 0 without gaps)") }
            tokens.append(text)
            types.append(special[id].map { $0 ? 3 : 4 } ?? 1)
        }
        for m in json["model"]?["merges"]?.array ?? [] {
            if let s = m.string { merges.append(s) }
            else if let pair = m.array, pair.count == 2, let a = pair[0].string, let b = pair[1].string { merges.append(a + " " + b) }
            else { throw PunaError("\(file): a merge is neither \"a b\" nor [\"a\", \"b\"]") }
        }
        // A post-processor that puts a special token first adds a BOS (Llama 3's tokenizer.json does).
        if let first = json["post_processor"]?["single"]?[0]?["SpecialToken"]?["id"]?.string,
           let id = tokens.firstIndex(of: first) {
            bos = id
            addBOS = true
        }
    }

    static func preTokenizerName(_ pre: JSONValue, file: String) throws(PunaError) -> String {
        var splits: [String] = []
        var byteLevelRegex = false
        func visit(_ p: JSONValue) {
            switch p["type"]?.string {
            case "Sequence"?: for inner in p["pretokenizers"]?.array ?? [] { visit(inner) }
            case "Split"?: if let r = p["pattern"]?["Regex"]?.string { splits.append(r) }
            case "ByteLevel"?: if p["use_regex"]?.bool ?? true { byteLevelRegex = true }
            default: break
            }
        }
        visit(pre)
        if splits.isEmpty && byteLevelRegex { return "gpt-2" }
        if splits.count == 1, let known = knownSplits.first(where: { $0.regex == splits[0] }) { return known.pre }
        throw PunaError("\(file): pre-tokenizer '\(clipped(splits.first ?? pre["type"]?.string ?? "none"))' is not one Puna recognizes (it knows GPT-2's, Llama 3's, Qwen2's and BLOOM's); convert the model to GGUF")
    }

    // MARK: tokenizer_config.json

    mutating func applyConfig(_ config: JSONValue) {
        if let b = config["add_bos_token"]?.bool { addBOS = b }
        if let e = config["add_eos_token"]?.bool { addEOS = e }
        if let t = config["chat_template"]?.string { chatTemplate = t }
        if let list = config["chat_template"]?.array {
            let named = list.first { $0["name"]?.string == "default" } ?? list.first
            chatTemplate = named?["template"]?.string
        }
        func id(_ key: String) -> Int? {
            guard let text = config[key]?.string ?? config[key]?["content"]?.string else { return nil }
            return tokens.firstIndex(of: text)
        }
        if model == "gpt2" {
            bos = id("bos_token") ?? bos
            eos = id("eos_token") ?? eos
            unk = id("unk_token") ?? unk
        }
    }
}

/// Bounded reads of protobuf wire format (varints, fixed32, length-delimited fields).
struct ProtobufReader {
    let bytes: UnsafeBufferPointer<UInt8>
    var position: Int
    let end: Int
    let file: String
    let what: String

    init(_ bytes: UnsafeBufferPointer<UInt8>, file: String, what: String, start: Int = 0, end: Int? = nil) {
        self.bytes = bytes; self.position = start; self.end = end ?? bytes.count; self.file = file; self.what = what
    }

    func fail(_ field: String) -> PunaError { PunaError("\(file): truncated or malformed protobuf (\(what): \(field))") }

    mutating func varint(_ field: String) throws(PunaError) -> UInt64 {
        var value: UInt64 = 0
        for shift in stride(from: 0, to: 70, by: 7) {
            guard position < end else { throw fail(field) }
            let b = bytes[position]
            position += 1
            guard shift < 64 else { throw fail(field) }
            value |= UInt64(b & 0x7f) << UInt64(shift)
            if b & 0x80 == 0 { return value }
        }
        throw fail(field)
    }

    /// An int32 field's varint (negative numbers are sign-extended to 64 bits).
    func signed(_ v: UInt64) -> Int { Int(Int64(bitPattern: v)) }

    mutating func fixed32(_ field: String) throws(PunaError) -> UInt32 {
        guard end - position >= 4 else { throw fail(field) }
        var v: UInt32 = 0
        for i in 0..<4 { v |= UInt32(bytes[position + i]) << UInt32(8 * i) }
        position += 4
        return v
    }

    mutating func length(_ field: String) throws(PunaError) -> Int {
        let n = try varint(field)
        guard n <= UInt64(end - position) else { throw fail(field) }
        return Int(n)
    }

    /// The next field's number and wire type, nil at the end.
    mutating func nextField() throws(PunaError) -> (Int, Int)? {
        guard position < end else { return nil }
        let key = try varint("a field key")
        guard key >> 3 <= UInt64(1 << 29) else { throw fail("a field number") }
        return (Int(key >> 3), Int(key & 7))
    }

    mutating func skip(_ wire: Int) throws(PunaError) {
        switch wire {
        case 0: _ = try varint("a varint field")
        case 1: guard end - position >= 8 else { throw fail("a fixed64 field") }; position += 8
        case 2: position += try length("a length-delimited field")
        case 5: _ = try fixed32("a fixed32 field")
        default: throw fail("wire type \(wire)")
        }
    }

    mutating func message(_ field: String) throws(PunaError) -> ProtobufReader {
        let n = try length(field)
        let inner = ProtobufReader(bytes, file: file, what: field, start: position, end: position + n)
        position += n
        return inner
    }

    mutating func string(_ field: String) throws(PunaError) -> String {
        let n = try length(field)
        let s = String(decoding: UnsafeBufferPointer(rebasing: bytes[position..<(position + n)]), as: UTF8.self)
        position += n
        return s
    }
}
