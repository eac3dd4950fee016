import CPuna

/// The tokenizer.* keys `puna convert` writes, built as convert_hf_to_gguf.py builds them:
/// a SentencePiece vocabulary from tokenizer.model (model "llama", pre "default", scores), else a
/// byte-level BPE one from tokenizer.json (model "gpt2", merges), then the special tokens, the
/// add-BOS/EOS/SEP flags, the chat template and normalizer flags the way gguf-py's SpecialVocab finds
/// them in tokenizer.json, tokenizer_config.json and config.json.
struct ConvertVocab {
    private(set) var keys: [(String, GGUFValue)] = []
    let folder: String
    let vocabSize: Int

    private mutating func add(_ key: String, _ value: GGUFValue) {
        if let i = keys.firstIndex(where: { $0.0 == key }) { keys[i].1 = value } else { keys.append((key, value)) }
    }

    init(folder: String, arch: String, config: JSONValue, vocabSize: Int) throws(PunaError) {
        self.folder = folder
        self.vocabSize = vocabSize
        let tokenizerConfigPath = folder + "/tokenizer_config.json"
        let tokenizerConfig: JSONValue? = puna_path_exists(tokenizerConfigPath) != 0 ? try HuggingFaceFolder.readJSON(tokenizerConfigPath) : nil
        let tokenizerJSONPath = folder + "/tokenizer.json"
        let tokenizerJSON: JSONValue? = puna_path_exists(tokenizerJSONPath) != 0 ? try HuggingFaceFolder.readJSON(tokenizerJSONPath) : nil

        if arch == "llama", let prefix = tokenizerConfig?["add_prefix_space"]?.bool {
            add("tokenizer.ggml.add_space_prefix", .bool(prefix))
        }
        if puna_path_exists(folder + "/tokenizer.model") != 0 {
            try addSentencePiece(tokenizerConfig: tokenizerConfig)
            try addSpecialTokens(tokenizerJSON: tokenizerJSON, tokenizerConfig: tokenizerConfig, config: config,
                                 loadMerges: false, vocabLimit: vocabSize)
        } else if let tokenizerJSON {
            if tokenizerJSON["model"]?["byte_fallback"]?.bool == true {
                throw PunaError("\(tokenizerJSONPath): a SentencePiece-style BPE (byte_fallback) without tokenizer.model is not supported by puna convert; add the model's tokenizer.model")
            }
            try addByteLevelBPE(tokenizerJSON, file: tokenizerJSONPath, tokenizerConfig: tokenizerConfig)
            try addSpecialTokens(tokenizerJSON: tokenizerJSON, tokenizerConfig: tokenizerConfig, config: config,
                                 loadMerges: true, vocabLimit: nil)
        } else {
            throw PunaError("\(folder): no tokenizer.model or tokenizer.json")
        }
        // The converter's rule for vocabularies of 49152 (Granite, SmolLM): no BOS.
        if arch == "llama" && vocabSize == 49152 { add("tokenizer.ggml.add_bos_token", .bool(false)) }
    }

    /// Added tokens that should be control tokens although not flagged special (<|...|>, <pad> …).
    static func looksSpecial(_ token: String) -> Bool {
        if ["<pad>", "<mask>", "<2mass>", "[@BOS@]"].contains(token) { return true }
        if token.hasPrefix("<|") && token.hasSuffix("|>") { return true }
        if token.hasPrefix("<\u{FF5C}") && token.hasSuffix("\u{FF5C}>") { return true }
        return token.hasPrefix("<unused") && token.hasSuffix(">")
    }

    /// SentencePiece's word-boundary mark in user-defined tokens becomes a plain space.
    static func spaced(_ token: String) -> String {
        var out = ""
        for c in token.unicodeScalars { out.unicodeScalars.append(c == "\u{2581}" ? " " : c) }
        return out
    }

    // MARK: tokenizer.model

    private mutating func addSentencePiece(tokenizerConfig: JSONValue?) throws(PunaError) {
        let model = try HuggingFaceVocab(sentencePiece: folder + "/tokenizer.model")
        var tokens: [String] = [], scores: [Float] = [], types: [Int32] = []
        for i in 0..<vocabSize { tokens.append("[PAD\(i)]") }
        scores = [Float](repeating: -10000, count: vocabSize)
        types = [Int32](repeating: 5, count: vocabSize)
        for id in 0..<min(model.tokens.count, vocabSize) {
            tokens[id] = model.tokens[id]
            scores[id] = model.scores[id]
            // unknown, control, unused and byte pieces keep their type; normal and user-defined are normal
            let t = model.types[id]
            types[id] = (t == 2 || t == 3 || t == 5 || t == 6) ? t : 1
        }
        let addedPath = folder + "/added_tokens.json"
        if puna_path_exists(addedPath) != 0 {
            for (text, value) in try HuggingFaceFolder.readJSON(addedPath).object ?? [] {
                guard let id = value.int, id >= 0 else { throw PunaError("\(addedPath): '\(clipped(text))' has no token id") }
                guard id < vocabSize else { continue }
                tokens[id] = text; scores[id] = -1000; types[id] = 4
            }
        }
        for (key, data) in tokenizerConfig?["added_tokens_decoder"]?.object ?? [] {
            guard let id = Int(key), id >= 0, let content = data["content"]?.string else {
                throw PunaError("\(folder)/tokenizer_config.json: added_tokens_decoder entry '\(clipped(key))' needs an integer id and a content string")
            }
            guard id < vocabSize else { continue }
            if data["special"]?.bool == true || ConvertVocab.looksSpecial(content) {
                types[id] = 3
                tokens[id] = content
            } else {
                types[id] = 4
                tokens[id] = ConvertVocab.spaced(content)
            }
            scores[id] = -1000
        }
        add("tokenizer.ggml.model", .string("llama"))
        add("tokenizer.ggml.pre", .string("default"))
        add("tokenizer.ggml.tokens", .array(.string, tokens.map { .string($0) }))
        add("tokenizer.ggml.scores", .array(.float32, scores.map { .float32($0) }))
        add("tokenizer.ggml.token_type", .array(.int32, types.map { .int32($0) }))
    }

    // MARK: tokenizer.json

    private mutating func addByteLevelBPE(_ json: JSONValue, file: String, tokenizerConfig: JSONValue?) throws(PunaError) {
        let type = json["model"]?["type"]?.string ?? "?"
        guard type == "BPE" else {
            throw PunaError("\(file): model type '\(clipped(type))' is not supported (puna convert reads byte-level BPE tokenizer.json, or tokenizer.model)")
        }
        let pre = try ConvertVocab.preTokenizerName(json["pre_tokenizer"] ?? .null, file: file)
        guard let vocab = json["model"]?["vocab"]?.object else { throw PunaError("\(file): model.vocab is not an object") }
        var byID = [String?](repeating: nil, count: vocabSize)
        var added = [Bool](repeating: false, count: vocabSize)
        var special = [Bool](repeating: false, count: vocabSize)
        func place(_ text: String, _ id: Int?) throws(PunaError) {
            guard let id, id >= 0 else { throw PunaError("\(file): token '\(clipped(text))' has no valid id") }
            guard id < vocabSize else {
                throw PunaError("\(file): token '\(clipped(text))' has id \(id), but config.json's vocab_size is \(vocabSize)")
            }
            byID[id] = text
        }
        for (text, value) in vocab { try place(text, value.int) }
        for entry in json["added_tokens"]?.array ?? [] {
            guard let text = entry["content"]?.string else { throw PunaError("\(file): an added_tokens entry has no content") }
            try place(text, entry["id"]?.int)
            let id = entry["id"]!.int!
            added[id] = true
            special[id] = entry["special"]?.bool ?? false
        }
        var tokens: [GGUFValue] = [], types: [GGUFValue] = []
        for id in 0..<vocabSize {
            guard let text = byID[id] else {
                tokens.append(.string("[PAD\(id)]")); types.append(.int32(5))
                continue
            }
            if added[id] {
                if special[id] || ConvertVocab.looksSpecial(text) {
                    tokens.append(.string(text)); types.append(.int32(3))
                } else {
                    tokens.append(.string(ConvertVocab.spaced(text))); types.append(.int32(4))
                }
            } else {
                tokens.append(.string(text)); types.append(.int32(1))
            }
        }
        add("tokenizer.ggml.model", .string("gpt2"))
        add("tokenizer.ggml.pre", .string(pre))
        add("tokenizer.ggml.tokens", .array(.string, tokens))
        add("tokenizer.ggml.token_type", .array(.int32, types))
    }

    /// llama.cpp's pre-tokenizer name for a tokenizer.json's pre-tokenizer. The converter identifies it
    /// by hashing how the tokenizer splits a test text; Puna recognizes the split rules themselves
    /// (the ones HuggingFaceVocab knows, plus SmolLM's digit splitting before GPT-2's rule).
    static func preTokenizerName(_ pre: JSONValue, file: String) throws(PunaError) -> String {
        if pre["type"]?.string == "Sequence", let parts = pre["pretokenizers"]?.array, parts.count == 2,
           parts[0]["type"]?.string == "Digits", parts[0]["individual_digits"]?.bool == true,
           parts[1]["type"]?.string == "ByteLevel", parts[1]["use_regex"]?.bool ?? true {
            return "smollm"
        }
        return try HuggingFaceVocab.preTokenizerName(pre, file: file)
    }

    // MARK: special tokens (gguf-py's SpecialVocab)

    private mutating func addSpecialTokens(tokenizerJSON: JSONValue?, tokenizerConfig: JSONValue?, config: JSONValue,
                                           loadMerges: Bool, vocabLimit: Int?) throws(PunaError) {
        var kinds = ["bos", "eos", "unk", "sep", "pad", "cls", "mask"]
        var ids: [(kind: String, id: Int)] = []
        var addFlags: [(kind: String, value: Bool)] = []
        var merges: [String] = []
        var lowercase: Bool? = nil, stripAccents: Bool? = nil
        // Edits the converter makes to its copy of tokenizer_config.json.
        var configEdits: [(key: String, value: JSONValue)] = []
        let configIsSet = !(tokenizerConfig?.object?.isEmpty ?? true)
        func configValue(_ key: String) -> JSONValue? {
            if let edit = configEdits.last(where: { $0.key == key }) { return edit.value }
            return tokenizerConfig?[key]
        }
        func truthy(_ v: JSONValue?) -> Bool {
            switch v {
            case nil, .null?: return false
            case .bool(let b)?: return b
            case .string(let s)?: return !s.isEmpty
            case .array(let a)?: return !a.isEmpty
            case .object(let o)?: return !o.isEmpty
            case .number(let d, _)?: return d != 0
            }
        }
        func same(_ text: String?, _ v: JSONValue?) -> Bool { text != nil && v?.string == text }
        func setDefault(_ kind: String, _ value: Bool) { if !addFlags.contains(where: { $0.kind == kind }) { addFlags.append((kind, value)) } }
        func setFlag(_ kind: String, _ value: Bool) {
            if let i = addFlags.firstIndex(where: { $0.kind == kind }) { addFlags[i].value = value } else { addFlags.append((kind, value)) }
        }
        func setID(_ kind: String, _ id: Int?) throws(PunaError) {
            guard let id else { return }
            guard id >= 0 else { throw PunaError("\(folder): invalid id \(id) for the \(kind) token") }
            if let limit = vocabLimit, id >= limit { return }
            if ids.contains(where: { $0.kind == kind }) { return }
            ids.append((kind, id))
        }

        var addedTokens: [JSONValue] = []
        if let tokenizer = tokenizerJSON {
            if loadMerges, let list = tokenizer["model"]?["merges"]?.array, let first = list.first {
                if first.string != nil {
                    for m in list { guard let s = m.string else { throw PunaError("\(folder)/tokenizer.json: merges mix strings and pairs") }; merges.append(s) }
                } else if first.array != nil {
                    for m in list {
                        guard let pair = m.array, pair.count == 2, let a = pair[0].string, let b = pair[1].string else {
                            throw PunaError("\(folder)/tokenizer.json: a merge is neither \"a b\" nor [\"a\", \"b\"]")
                        }
                        // A space inside a part is stored as U+0120 so that the pair stays splittable.
                        func encoded(_ s: String) -> String {
                            var out = ""
                            for c in s.unicodeScalars { out.unicodeScalars.append(c == " " ? "\u{0120}" : c) }
                            return out
                        }
                        merges.append(encoded(a) + " " + encoded(b))
                    }
                } else {
                    throw PunaError("\(folder)/tokenizer.json: unknown merges format")
                }
            }
            func parseNormalizer(_ n: JSONValue) {
                switch n["type"]?.string {
                case "Lowercase"?: lowercase = true
                case "StripAccents"?: stripAccents = true
                case "BertNormalizer"?:
                    if let l = n["lowercase"]?.bool { lowercase = l }
                    if let s = n["strip_accents"]?.bool { stripAccents = s }
                case "Sequence"?: for inner in n["normalizers"]?.array ?? [] { parseNormalizer(inner) }
                default: break
                }
            }
            if let normalizer = tokenizer["normalizer"], truthy(normalizer) { parseNormalizer(normalizer) }
            addedTokens = tokenizer["added_tokens"]?.array ?? []

            var bos = configValue("bos_token"), cls = configValue("cls_token")
            var eos = configValue("eos_token"), sep = configValue("sep_token")
            if !truthy(bos) && truthy(cls) && configIsSet { configEdits.append(("bos_token", cls!)); bos = cls }
            if !truthy(eos) && truthy(sep) && configIsSet { configEdits.append(("eos_token", sep!)); eos = sep }
            if let post = tokenizer["post_processor"], truthy(post) {
                let processors = post["processors"]?.array ?? [post]
                for processor in processors {
                    switch processor["type"]?.string {
                    case "ByteLevel"?:
                        setDefault("bos", false)
                        setDefault("eos", false)
                    case "RobertaProcessing"?:
                        setFlag("bos", true); setFlag("eos", true); setFlag("sep", true)
                        if !truthy(cls) && configIsSet {
                            cls = processor["cls"]?[0] ?? bos
                            configEdits.append(("cls_token", cls ?? .null))
                        }
                        if !truthy(sep) && configIsSet {
                            sep = processor["sep"]?[0] ?? eos
                            configEdits.append(("sep_token", sep ?? .null))
                        }
                    case "TemplateProcessing"?:
                        let single = processor["single"]?.array ?? []
                        let pair = processor["pair"]?.array ?? []
                        var first: String? = nil, last: String? = nil
                        if single.count > 1 {
                            first = single[0]["SpecialToken"]?["id"]?.string
                            if let f = first, !f.isEmpty {
                                if !configIsSet {
                                    bos = .string(f)
                                } else if !same(f, bos) && !same(f, cls) {
                                    if !truthy(bos) { configEdits.append(("bos_token", .string(f))); bos = .string(f) }
                                    if !truthy(cls) { configEdits.append(("cls_token", .string(f))); cls = .string(f) }
                                }
                                setFlag("bos", same(f, bos) || same(f, cls))
                            } else { first = nil }
                            last = single[single.count - 1]["SpecialToken"]?["id"]?.string
                            if let l = last, !l.isEmpty {
                                if !configIsSet {
                                    eos = .string(l)
                                } else if !same(l, eos) {
                                    if !kinds.contains("eot") {
                                        kinds.append("eot"); configEdits.append(("eot_token", eos ?? .null))
                                    } else if !kinds.contains("eom") {
                                        kinds.append("eom"); configEdits.append(("eom_token", eos ?? .null))
                                    }
                                    configEdits.append(("eos_token", .string(l))); eos = .string(l)
                                }
                                setFlag("eos", same(l, eos))
                            } else { last = nil }
                        }
                        if !pair.isEmpty {
                            let start = first != nil && pair[0]["SpecialToken"]?["id"]?.string == first ? 1 : 0
                            let stop = last != nil && pair[pair.count - 1]["SpecialToken"]?["id"]?.string == last ? pair.count - 1 : pair.count
                            let middle = start < stop ? Array(pair[start..<stop]) : []
                            if !middle.isEmpty {
                                let a = middle[0]["Sequence"]?["id"]?.string, b = middle[middle.count - 1]["Sequence"]?["id"]?.string
                                if a == "A" && b == "B" && middle.count > 2 {
                                    let inner = Array(middle[1..<(middle.count - 1)])
                                    var addSep = false
                                    if let entry = inner[0]["SpecialToken"]?["id"]?.string, !entry.isEmpty,
                                       same(entry, sep) || same(entry, eos), last == nil {
                                        addSep = true
                                    }
                                    if inner.count == 2, let entry = inner[1]["SpecialToken"]?["id"]?.string, !entry.isEmpty,
                                       same(entry, sep) || same(entry, eos) {
                                        addSep = true
                                    }
                                    setFlag("sep", addSep)
                                    if addSep && !truthy(sep) && configIsSet { configEdits.append(("sep_token", eos ?? .null)) }
                                }
                            }
                        }
                    default: break
                    }
                }
            }
        }
        var chatTemplate: JSONValue? = nil
        if configIsSet {
            chatTemplate = configValue("chat_template")
            if chatTemplate == nil {
                let jinja = folder + "/chat_template.jinja", jsonPath = folder + "/chat_template.json"
                if puna_path_exists(jinja) != 0 {
                    chatTemplate = .string(try withInputBytes(jinja, maxBytes: HuggingFaceFolder.maxJSONBytes, limitNote: "Puna's limit for a chat template") { b in
                        String(decoding: b, as: UTF8.self)
                    })
                } else if puna_path_exists(jsonPath) != 0 {
                    chatTemplate = try HuggingFaceFolder.readJSON(jsonPath)["chat_template"]
                }
            }
            for kind in kinds {
                if let flag = configValue("add_\(kind)_token")?.bool { setDefault(kind, flag) }
                let entry = configValue("\(kind)_token")
                guard let content = entry?.string ?? entry?["content"]?.string else { continue }
                let id = addedTokens.first(where: { $0["content"]?.string == content })?["id"]?.int
                try setID(kind, id)
            }
        }
        for kind in kinds {
            var value = config["\(kind)_token_id"]
            if value == nil || value!.isNull { value = config["text_config"]?["\(kind)_token_id"] }
            if let v = value, let id = v.int { try setID(kind, id) }
        }

        if !merges.isEmpty { add("tokenizer.ggml.merges", .array(.string, merges.map { .string($0) })) }
        let idKeys: [String: String] = ["bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id",
                                        "sep": "seperator_token_id", "pad": "padding_token_id", "mask": "mask_token_id",
                                        "eot": "eot_token_id", "eom": "eom_token_id"]
        for (kind, id) in ids {
            guard let key = idKeys[kind] else { continue }   // the converter has no key for cls
            add("tokenizer.ggml." + key, .uint32(UInt32(id)))
        }
        for (kind, value) in addFlags where kind == "bos" || kind == "eos" || kind == "sep" {
            add("tokenizer.ggml.add_\(kind)_token", .bool(value))
        }
        if let template = chatTemplate {
            if let text = template.string {
                add("tokenizer.chat_template", .string(text))
            } else if let list = template.array {
                // Named templates: tokenizer.chat_template.NAME, listed in tokenizer.chat_templates.
                var names: [String] = []
                var defaultTemplate: String? = nil
                for choice in list {
                    var name = ""
                    for c in (choice["name"]?.string ?? "").unicodeScalars {
                        let ok = (c >= "a" && c <= "z") || (c >= "A" && c <= "Z") || (c >= "0" && c <= "9")
                        name.unicodeScalars.append(ok ? c : "_")
                    }
                    guard !name.isEmpty, let text = choice["template"]?.string else { continue }
                    if name == "default" { defaultTemplate = text } else {
                        if !names.contains(name) { names.append(name) }
                        add("tokenizer.chat_template." + name, .string(text))
                    }
                }
                if !names.isEmpty { add("tokenizer.chat_templates", .array(.string, names.map { .string($0) })) }
                if let defaultTemplate { add("tokenizer.chat_template", .string(defaultTemplate)) }
            }
        }
        if let lowercase { add("tokenizer.ggml.normalizer.lowercase", .bool(lowercase)) }
        if let stripAccents { add("tokenizer.ggml.normalizer.strip_accents", .bool(stripAccents)) }
    }
}
