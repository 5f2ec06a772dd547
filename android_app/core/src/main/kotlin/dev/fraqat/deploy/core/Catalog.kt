package dev.fraqat.deploy.core

import java.io.File

/** A compiled model the CLI pushed, with the latest request that used it (its pipeline settings and prompts). */
data class PushedModel(val request: Request, val requestFile: File, val modified: Long) {
    val name: String get() = request.modelName
    val kind: String get() = request.pipeline.kind

    /** "digits · sana · 3 components · 20261122-080000-000" */
    val label: String get() = "$name · $kind · ${request.components.size} components · ${request.id}"
}

/** What the demo screen offers: the models under `files/models` that a request under `files/runs` describes. */
object Catalog {
    fun models(filesDir: File, schemas: Schemas?): List<PushedModel> {
        val requests = File(filesDir, Protocol.RUNS_DIR).listFiles().orEmpty().map { File(it, "request.json") }.filter { it.isFile }
        val latest = LinkedHashMap<List<String>, PushedModel>()
        for (file in requests.sortedByDescending { it.lastModified() }) {
            val request = runCatching {
                val data = Json.parse(file.readText())
                schemas?.validate("request", data)
                Request.fromJson(asObject(data, "request"))
            }.getOrNull() ?: continue
            val complete = request.modelFiles.all { (_, f) -> File(filesDir, f.path).let { it.isFile && it.length() == f.bytes } }
            if (!complete) continue
            val key = request.components.values.map { it.onnx }.sorted()
            if (key !in latest) latest[key] = PushedModel(request, file, file.lastModified())
        }
        return latest.values.toList()
    }

    /**
     * A Sana prompt's input tensors drawn on the phone, as the CLI's `bench_inputs` builds them: the prompt and the
     * "" prompt tokenized to the text encoder's length, and the seed's initial noise.
     */
    fun sanaTensors(model: PushedModel, tokenizer: WordLevelTokenizer, prompt: String, seed: Long): Map<String, Tensor> {
        val example = model.request.prompts.firstOrNull()?.tensors
        val maxLength = example?.get("input_ids")?.shape?.last() ?: 16
        val latent = example?.get("noise")?.shape?.toIntArray()
            ?: model.request.pipeline.latentShape?.let { intArrayOf(1) + it.toIntArray() }
            ?: throw BenchError(ErrorKind.INVALID_REQUEST, "the request gives no latent shape")
        val cond = tokenizer.encode(prompt, maxLength)
        val uncond = tokenizer.encode("", maxLength)
        return linkedMapOf(
            "input_ids" to cond.idsTensor(), "attention_mask" to cond.maskTensor(),
            "uncond_input_ids" to uncond.idsTensor(), "uncond_attention_mask" to uncond.maskTensor(),
            "noise" to TorchNoise.randn(latent, seed),
        )
    }
}
