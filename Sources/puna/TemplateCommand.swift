import PunaCore

/// `puna template`: print the prompt a conversation renders to with the model file's chat template
/// (or a built-in one). Reads only the GGUF metadata, so vocab-only files work.
enum TemplateCommand {
    static let specs: [FlagSpec] = [
        CommonFlags.model,
        FlagSpec(names: ["-i", "--input"], value: "FILE", help: "messages: a JSON list of {\"role\",\"content\"} (or an object with \"messages\", and optionally \"tools\"); '-' = stdin"),
        FlagSpec(names: ["--no-generation-prompt"], value: nil, help: "render without the assistant's generation prompt (add_generation_prompt=false)"),
        FlagSpec(names: ["--template"], value: "NAME", help: "\(PromptFormat.names.joined(separator: ", ")) (default auto: the file's tokenizer.chat_template)"),
        helpFlag,
    ]

    /// The largest messages file read.
    static let maxInputBytes = 16 << 20

    static func run(_ arguments: [String]) throws(PunaError) -> Int32 {
        let args = try ParsedArguments(command: "template", arguments: arguments, specs: specs)
        if args.has("-h") {
            out(helpText(usage: "puna template -m MODEL -i MESSAGES.json [--no-generation-prompt] [--template NAME]",
                         summary: "Print the prompt a conversation renders to with the model's chat template (tokenizer.chat_template, rendered as Hugging Face's apply_chat_template does). Works on vocab-only GGUF files.",
                         specs: specs))
            return 0
        }
        guard args.positionals.isEmpty else { throw PunaError("'puna template' takes no positional argument '\(args.positionals[0])'") }
        let path = try args.require("-m")
        let input = try args.require("-i")
        let doc = try withInputBytes(input, maxBytes: maxInputBytes, limitNote: "the largest messages file puna template reads") {
            (bytes: UnsafeBufferPointer<UInt8>) throws(PunaError) -> JSONValue in
            do throws(PunaError) { return try JSONValue.parse(bytes: bytes) } catch { throw PunaError("\(input): \(error.message)") }
        }
        var messages = doc
        var tools: JSONValue? = nil
        if doc.object != nil {
            guard let m = doc["messages"] else { throw PunaError("\(input): the object has no \"messages\" list") }
            messages = m
            if let t = doc["tools"], !t.isNull { tools = t }
        }
        guard let list = messages.array else { throw PunaError("\(input): messages must be a JSON list of {\"role\", \"content\"} objects") }
        for (i, m) in list.enumerated() {
            guard m.object != nil, m["role"]?.string != nil else {
                throw PunaError("\(input): message \(i + 1) is not an object with a string \"role\"")
            }
        }
        let addGenerationPrompt = !args.has("--no-generation-prompt")
        let gguf = try GGUFFile(path: path)
        let chat = try ChatTemplate(gguf: gguf)
        let format = try PromptFormat.resolve(args.string("--template"), chatTemplate: chat, fallback: .raw, what: "flag --template")
        switch format {
        case .chat(let template):
            out(try template.render(messages: messages, addGenerationPrompt: addGenerationPrompt, tools: tools))
        case .builtin(let template):
            if args.string("--template") == nil || args.string("--template")?.lowercased() == "auto" {
                throw PunaError("\(path): no \(ChatTemplate.metadataKey) in this file (choose a built-in one with --template: \(PromptTemplate.names.joined(separator: ", ")))")
            }
            out(try renderBuiltin(template, list, addGenerationPrompt: addGenerationPrompt))
        }
        return 0
    }

    /// A built-in template's text for a conversation: the system message, then each user turn with
    /// the assistant's reply after it (as `puna chat` lays turns out).
    static func renderBuiltin(_ template: PromptTemplate, _ messages: [JSONValue], addGenerationPrompt: Bool) throws(PunaError) -> String {
        var system: String? = nil
        var text = ""
        var isFirst = true
        for m in messages {
            let role = m["role"]?.string ?? ""
            let content = m["content"]?.string ?? ""
            switch role {
            case "system": system = content
            case "user":
                text += template.renderTurn(user: content, isFirst: isFirst, system: system)
                isFirst = false
            case "assistant":
                text += content
                if template.endsReplyWithEOS { text += "</s>" }
            default:
                throw PunaError("the built-in template \(template.name) has no role '\(role)'")
            }
        }
        return text
    }
}
