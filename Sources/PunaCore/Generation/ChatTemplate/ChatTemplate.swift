import CPuna

/// One message of a conversation; `extra` carries further fields templates read (tool calls, names).
public struct ChatMessage {
    public var role: String
    public var content: String
    public init(role: String, content: String) { self.role = role; self.content = content }
    var value: JinjaValue {
        var d = JinjaDict()
        d["role"] = .string(role)
        d["content"] = .string(content)
        return .dict(d)
    }
}

/// A GGUF file's `tokenizer.chat_template`, rendered with Hugging Face's chat conventions:
/// `messages`, `add_generation_prompt`, `bos_token`, `eos_token`, `tools` (None unless given).
public struct ChatTemplate {
    public static let metadataKey = "tokenizer.chat_template"
    public let source: String
    public let template: JinjaTemplate
    /// The texts of the BOS and EOS tokens (`tokenizer.ggml.tokens[bos/eos id]`).
    public let bosToken: String
    public let eosToken: String
    /// The date `strftime_now` reports.
    public var now: JinjaDate

    public init(source: String, bosToken: String, eosToken: String, now: JinjaDate = ChatTemplate.localNow(),
                limits: JinjaLimits = JinjaLimits()) throws(PunaError) {
        self.source = source
        self.template = try JinjaTemplate(source, limits: limits)
        self.bosToken = bosToken
        self.eosToken = eosToken
        self.now = now
    }

    /// The file's chat template, or nil when it has none. Needs only the metadata (works on
    /// vocab-only files and whatever the tokenizer type). A template that does not parse is an error.
    public init?(gguf: GGUFFile, now: JinjaDate = ChatTemplate.localNow()) throws(PunaError) {
        guard let value = gguf[ChatTemplate.metadataKey] else { return nil }
        guard let source = value.stringValue else { throw PunaError("\(gguf.path): \(ChatTemplate.metadataKey) is not a string") }
        let tokens = gguf["tokenizer.ggml.tokens"]?.arrayValue
        func tokenText(_ key: String) -> String {
            guard let id = gguf[key]?.intValue, let tokens, id >= 0, id < tokens.count else { return "" }
            return tokens[id].stringValue ?? ""
        }
        do throws(PunaError) {
            try self.init(source: source, bosToken: tokenText("tokenizer.ggml.bos_token_id"),
                          eosToken: tokenText("tokenizer.ggml.eos_token_id"), now: now)
        } catch {
            throw PunaError("\(gguf.path): \(ChatTemplate.metadataKey): \(error.message)")
        }
    }

    /// The local date and time (1970-01-01 when the clock cannot be read).
    public static func localNow() -> JinjaDate {
        var t: [Int32] = [1970, 1, 1, 0, 0, 0]
        _ = t.withUnsafeMutableBufferPointer { puna_local_time($0.baseAddress!) }
        return JinjaDate(year: Int(t[0]), month: Int(t[1]), day: Int(t[2]), hour: Int(t[3]), minute: Int(t[4]), second: Int(t[5]))
    }

    /// Render a conversation given as a JSON list of message objects (every field passes through).
    public func render(messages: JSONValue, addGenerationPrompt: Bool, tools: JSONValue? = nil) throws(PunaError) -> String {
        guard case .array = messages else { throw PunaError("chat messages must be a JSON list of objects") }
        return try render(messageValues: JinjaValue(json: messages), addGenerationPrompt: addGenerationPrompt,
                          tools: tools.map { JinjaValue(json: $0) } ?? .none)
    }

    public func render(messages: [ChatMessage], addGenerationPrompt: Bool) throws(PunaError) -> String {
        try render(messageValues: .list(messages.map { $0.value }), addGenerationPrompt: addGenerationPrompt, tools: .none)
    }

    func render(messageValues: JinjaValue, addGenerationPrompt: Bool, tools: JinjaValue) throws(PunaError) -> String {
        try template.render([
            ("messages", messageValues),
            ("tools", tools),
            ("documents", .none),
            ("add_generation_prompt", .bool(addGenerationPrompt)),
            ("bos_token", .string(bosToken)),
            ("eos_token", .string(eosToken)),
        ], now: now)
    }

    /// Tokens of rendered text: special-token text (`<|im_start|>`) becomes special tokens, and
    /// BOS is added only when the vocab asks for it and the text does not already start with it.
    public func tokens(_ text: String, tokenizer: Tokenizer) -> [Int32] {
        let hasBOS = !bosToken.isEmpty && text.utf8.starts(with: bosToken.utf8)
        return tokenizer.encode(text, addBOS: tokenizer.addsBOS && !hasBOS, parseSpecial: true)
    }
}

/// How a prompt is laid out: one of the built-in templates, or the model file's chat template.
public enum PromptFormat {
    case builtin(PromptTemplate)
    case chat(ChatTemplate)

    /// The names `--template` accepts: the built-ins and `auto`.
    public static let names = ["auto"] + PromptTemplate.names

    /// Resolve a template name. `auto` (and no name at all) picks the file's chat template when it
    /// has one, else the built-in named `fallback`.
    public static func resolve(_ name: String?, chatTemplate: ChatTemplate?, fallback: PromptTemplate, what: String) throws(PunaError) -> PromptFormat {
        guard let name, name.lowercased() != "auto" else {
            if let chatTemplate { return .chat(chatTemplate) }
            return .builtin(fallback)
        }
        guard let t = PromptTemplate(name: name) else {
            throw PunaError("\(what): unknown template '\(name)' (choose from \(PromptFormat.names.joined(separator: ", ")))")
        }
        return .builtin(t)
    }

    public var name: String {
        switch self {
        case .builtin(let t): return t.name
        case .chat: return "auto"
        }
    }

    /// One request: the prompt as a user message (after `system` as a system message), rendered
    /// with the generation prompt. Alpaca's `input` goes on a new line after the prompt.
    public func render(prompt: String, input: String? = nil, system: String? = nil) throws(PunaError) -> String {
        switch self {
        case .builtin(let t): return t.render(prompt: prompt, input: input, system: system)
        case .chat(let c):
            var user = prompt
            if let input, !input.isEmpty { user += "\n" + input }
            var messages: [ChatMessage] = []
            if let system { messages.append(ChatMessage(role: "system", content: system)) }
            messages.append(ChatMessage(role: "user", content: user))
            return try c.render(messages: messages, addGenerationPrompt: true)
        }
    }

    /// Tokens of rendered text (see `ChatTemplate.tokens`); built-in templates' text is plain text.
    public func tokens(_ text: String, tokenizer: Tokenizer, addBOS: Bool? = nil) -> [Int32] {
        switch self {
        case .builtin: return tokenizer.encode(text, addBOS: addBOS ?? tokenizer.addsBOS)
        case .chat(let c):
            if addBOS == false { return tokenizer.encode(text, addBOS: false, parseSpecial: true) }
            return c.tokens(text, tokenizer: tokenizer)
        }
    }

    /// Stop strings of the built-in templates; a chat template stops on end-of-generation tokens.
    public var stopStrings: [String] {
        switch self {
        case .builtin(let t): return t.stopStrings
        case .chat: return []
        }
    }
}
