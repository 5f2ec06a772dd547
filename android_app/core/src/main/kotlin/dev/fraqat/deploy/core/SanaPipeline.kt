package dev.fraqat.deploy.core

/** Runs one component on named inputs and returns its named outputs (the phone's HTP, or a test double). */
fun interface ComponentRunner {
    fun run(component: String, feed: Map<String, Tensor>): Map<String, Tensor>
}

/** Component timings of one generation, in ms, in call order; optionally told of every call (for progress). */
class Timed(private val clock: () -> Long = System::nanoTime, private val onCall: (String, Int) -> Unit = { _, _ -> }) {
    val calls = LinkedHashMap<String, MutableList<Double>>()

    fun call(runner: ComponentRunner, component: String, feed: Map<String, Tensor>): Map<String, Tensor> {
        val started = clock()
        val out = runner.run(component, feed)
        val list = calls.getOrPut(component) { ArrayList() }
        list.add((clock() - started) / 1e6)
        onCall(component, list.size)
        return out
    }
}

/**
 * The Sana pipeline over its three compiled components, as `pipeline.sana_generate`: the text encoder on the prompt
 * and on the "" prompt, `steps` flow-matching Euler steps of the transformer on the classifier-free-guidance batch
 * (unconditional first), the VAE decoder. Returns the image [3, H, W] clipped to [0, 1].
 */
object SanaPipeline {
    val TENSORS = listOf("input_ids", "attention_mask", "uncond_input_ids", "uncond_attention_mask", "noise")

    fun generate(runner: ComponentRunner, pipeline: PipelineSpec, tensors: Map<String, Tensor>, timed: Timed): FloatTensor {
        val missing = TENSORS.filter { it !in tensors }
        if (missing.isNotEmpty()) throw BenchError(ErrorKind.INVALID_REQUEST, "the prompt lacks the tensors ${missing.joinToString()}")
        val cond = first(timed.call(runner, "text_encoder", mapOf("input_ids" to tensors.getValue("input_ids"), "attention_mask" to tensors.getValue("attention_mask"))), "text_encoder")
        val uncond = first(
            timed.call(runner, "text_encoder", mapOf("input_ids" to tensors.getValue("uncond_input_ids"), "attention_mask" to tensors.getValue("uncond_attention_mask"))),
            "text_encoder",
        )
        val embeds = Tensor.concat(uncond, cond)
        val mask = Tensor.concat(tensors.getValue("uncond_attention_mask"), tensors.getValue("attention_mask"))
        val steps = pipeline.steps
        val sigmas = FlowScheduler.sigmas(steps, pipeline.flowShift)
        val scale = pipeline.numTrainTimesteps.toFloat() * pipeline.timestepScale.toFloat()
        val proj = pipeline.timeProj
        var x = tensors.getValue("noise") as? FloatTensor ?: throw BenchError(ErrorKind.INVALID_REQUEST, "the noise tensor must be float32")
        val batch = 2 * x.shape[0]
        val rows = pipeline.transformerBatch ?: batch
        if (rows < 1 || batch % rows != 0) throw BenchError(ErrorKind.INVALID_REQUEST, "transformer_batch $rows does not divide the guidance batch $batch")
        for (i in 0 until steps) {
            val t = FloatArray(batch) { sigmas[i] * scale }
            val feed = mapOf(
                "latent" to Tensor.concat(x, x), "timestep_features" to FlowScheduler.timestepFeatures(t, proj),
                "prompt_embeds" to embeds, "prompt_mask" to mask,
            )
            // the guidance batch in calls of the graph's rows (unconditional first), velocities stacked back
            val v = (0 until batch step rows).map { s ->
                first(timed.call(runner, "transformer", feed.mapValues { it.value.rows(s, s + rows) }), "transformer")
            }.reduce { a, b -> Tensor.concat(a, b) as FloatTensor }
            x = FlowScheduler.eulerStep(x, FlowScheduler.guided(v, pipeline.guidance), sigmas[i], sigmas[i + 1])
        }
        val image = first(timed.call(runner, "vae_decoder", mapOf("latent" to x)), "vae_decoder").rows(0, 1)
        val shape = image.shape.copyOfRange(1, image.shape.size)
        return FloatTensor(shape, FloatArray(image.size) { image.data[it].coerceIn(0f, 1f) })
    }

    private fun first(outputs: Map<String, Tensor>, component: String): FloatTensor {
        val out = outputs.values.firstOrNull() ?: throw BenchError(ErrorKind.HTP_ERROR, "$component returned no output")
        return out as? FloatTensor ?: throw BenchError(ErrorKind.HTP_ERROR, "$component returned ${out.describe()}, not float32")
    }
}
