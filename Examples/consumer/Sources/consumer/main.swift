import PunaCore

// consumer MODEL.gguf PROMPT: greedy continuation of PROMPT, 16 tokens, through PunaCore's public API.
let arguments = CommandLine.arguments
guard arguments.count == 3 else {
    fatalError("usage: consumer MODEL.gguf PROMPT")
}
do {
    let model = try LanguageModel(path: arguments[1], options: ModelOptions(threads: 2))
    let cache = try model.makeCache(contextLength: 256)
    let prompt = model.tokenizer.encode(arguments[2], addBOS: model.tokenizer.addsBOS)
    var options = GenerationOptions(maxTokens: 16)
    options.sampler.temperature = 0
    let generator = try Generator(model: model, cache: cache, prompt: prompt, options: options)
    var text = ""
    for step in generator { text += step.text }
    print(arguments[2] + text)
    print("consumer: \(generator.tokens.count) tokens, stop: \(generator.finishReason?.rawValue ?? "?")")
} catch {
    fatalError("consumer: \(error)")
}
