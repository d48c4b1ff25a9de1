"""The official clients of hosted media platforms against a local Meridian.

fal's `fal-client`, OpenAI's `openai` and Replicate's `replicate`, unmodified, pointed at the
stack `scripts/dev` started (HTTPS with its own CA) by nothing but what `scripts/dev`
prints: FAL_KEY, FAL_QUEUE_RUN_HOST, FAL_RUN_HOST, SSL_CERT_FILE, OPENAI_BASE_URL,
OPENAI_API_KEY, REPLICATE_API_TOKEN, REPLICATE_BASE_URL and MERIDIAN_URL (tests/clients/run
sets them).

The models: meridian/esrgan-x2 (real weights), meridian/whisper-tiny-en (real weights) and
meridian/tiny-sd (the pipeline test model: random weights, it draws noise).
"""

import base64
import hashlib
import http.server
import json
import os
import queue
import struct
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.parse

import fal_client
import httpx
import openai
import replicate
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from httpx_sse import connect_sse

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURE = os.path.join(ROOT, "models", "esrgan-slim", "reference", "fixture.png")
UPSCALER = "meridian/esrgan-x2"
WHISPER = "meridian/whisper-tiny-en"
NOISE = "meridian/tiny-sd"
SENTENCE = "The children are playing football in the garden."


def png_size(data: bytes) -> tuple:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:16]
    return struct.unpack(">II", data[16:24])


def data_uri(data: bytes, media_type: str) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def fetch_without_key(url: str) -> httpx.Response:
    """A link as a browser would open it: no API key."""
    with httpx.Client() as http:
        return http.get(url)


def speech_wav() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "speech.wav")
        subprocess.run(["espeak-ng", "-w", path, SENTENCE], check=True)
        with open(path, "rb") as f:
            return f.read()


def words(text: str) -> set:
    return {w.strip(".,!?").lower() for w in text.split()}


class Receiver:
    """A webhook receiver on a loopback port: each post (headers, body) lands in a queue."""

    def __init__(self):
        posts = self.posts = queue.Queue()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                posts.put(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def next(self, timeout=120):
        return self.posts.get(timeout=timeout)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


IMAGE = open(FIXTURE, "rb").read()
IMAGE_SIZE = png_size(IMAGE)


class Fal(unittest.TestCase):
    """fal's queue protocol through fal_client."""

    def upscale_args(self):
        return {"image_url": data_uri(IMAGE, "image/png")}

    def assert_upscaled(self, output):
        image = output["image"]
        self.assertEqual(image["content_type"], "image/png")
        self.assertEqual((image["width"], image["height"]), tuple(2 * s for s in IMAGE_SIZE))
        link = fetch_without_key(image["url"])
        self.assertEqual(link.status_code, 200, link.text)
        self.assertEqual(len(link.content), image["file_size"])
        self.assertEqual(png_size(link.content), tuple(2 * s for s in IMAGE_SIZE))
        return image

    def test_submit_status_result_and_a_link_that_needs_no_key(self):
        handle = fal_client.submit(UPSCALER, arguments=self.upscale_args())
        self.assertTrue(handle.status_url.startswith("https://"), handle.status_url)
        status = handle.status(with_logs=True)
        self.assertIsInstance(
            status, (fal_client.Queued, fal_client.InProgress, fal_client.Completed)
        )
        seen = [type(event).__name__ for event in handle.iter_events(with_logs=True)]
        self.assertEqual(seen[-1], "Completed")
        final = handle.status(with_logs=True)
        self.assertIsInstance(final, fal_client.Completed)
        self.assertIsNone(final.error)
        self.assertTrue(any("finished" in line["message"] for line in final.logs), final.logs)
        self.assertIn("inference_time", final.metrics)
        image = self.assert_upscaled(handle.get())
        # The same result through the request id alone, as another process would ask.
        again = fal_client.result(UPSCALER, handle.request_id)
        self.assertEqual(again["image"]["file_size"], image["file_size"])
        # An altered link and an expired one open nothing.
        parts = urllib.parse.urlsplit(image["url"])
        query = dict(urllib.parse.parse_qsl(parts.query))
        for changed in (
            {**query, "signature": "0" * len(query["signature"])},
            {**query, "expires": str(int(query["expires"]) + 60)},
            {**query, "expires": str(int(time.time()) - 1)},
        ):
            url = parts._replace(query=urllib.parse.urlencode(changed)).geturl()
            self.assertEqual(fetch_without_key(url).status_code, 403, url)

    def test_the_status_stream_ends_after_completed(self):
        handle = fal_client.submit(UPSCALER, arguments=self.upscale_args())
        headers = {"Authorization": f"Key {os.environ['FAL_KEY']}"}
        events = []
        with httpx.Client(timeout=120) as http:
            with connect_sse(http, "GET", handle.status_url + "/stream", headers=headers) as sse:
                self.assertTrue(
                    sse.response.headers["content-type"].startswith("text/event-stream")
                )
                for event in sse.iter_sse():
                    events.append(event.json())
        self.assertEqual(events[-1]["status"], "COMPLETED")
        self.assertTrue(all("logs" in e for e in events), events)
        self.assertTrue(
            all(e["status"] in ("IN_QUEUE", "IN_PROGRESS", "COMPLETED") for e in events)
        )

    def test_subscribe_reports_updates_and_returns_the_output(self):
        updates = []
        enqueued = []
        output = fal_client.subscribe(
            UPSCALER,
            arguments=self.upscale_args(),
            with_logs=True,
            on_enqueue=enqueued.append,
            on_queue_update=updates.append,
        )
        self.assertEqual(len(enqueued), 1)
        self.assertIsInstance(updates[-1], fal_client.Completed)
        self.assert_upscaled(output)

    def test_run_returns_the_bare_output(self):
        # The client's own encoding of a file (a data: URI).
        arguments = {"image_url": fal_client.encode_file(FIXTURE)}
        self.assert_upscaled(fal_client.run(UPSCALER, arguments=arguments))

    def test_cancel_while_queued_and_after_completion(self):
        # Enough long jobs to hold every slot, so the last one waits in the queue.
        long_job = {"prompt": "noise", "steps": 50, "width": 256, "height": 256}
        handles = [fal_client.submit(NOISE, arguments=long_job) for _ in range(12)]
        last = handles[-1]
        self.assertIsInstance(last.status(), fal_client.Queued)
        last.cancel()
        final = None
        for event in last.iter_events():
            final = event
        self.assertEqual(final.error_type, "request_cancelled")
        with self.assertRaises(fal_client.FalClientHTTPError) as raised:
            last.get()
        self.assertEqual(raised.exception.status_code, 400)
        for handle in handles[:-1]:
            handle.cancel()
        # Cancelling a finished request is a 400, not a 409 the client would retry.
        done = fal_client.submit(UPSCALER, arguments=self.upscale_args())
        done.get()
        started = time.monotonic()
        with self.assertRaises(fal_client.FalClientHTTPError) as raised:
            done.cancel()
        self.assertEqual(raised.exception.status_code, 400)
        self.assertLess(time.monotonic() - started, 5, "the client retried the answer")

    def test_bad_input_and_an_unknown_model_are_errors_the_client_raises(self):
        with self.assertRaises(fal_client.FalClientHTTPError) as raised:
            fal_client.submit(UPSCALER, arguments={"image_url": "data:image/png;base64,AAAA"})
        self.assertEqual(raised.exception.status_code, 422)
        self.assertIn("image", raised.exception.message)
        with self.assertRaises(fal_client.FalClientHTTPError) as raised:
            fal_client.submit("meridian/no-such-model", arguments={})
        self.assertEqual(raised.exception.status_code, 404)


    def test_a_webhook_with_fals_signature_verified_with_the_jwks(self):
        receiver = Receiver()
        self.addCleanup(receiver.close)
        handle = fal_client.submit(
            UPSCALER, arguments=self.upscale_args(), webhook_url=receiver.url
        )
        headers, body = receiver.next()
        payload = json.loads(body)
        self.assertEqual(payload["request_id"], handle.request_id)
        self.assertEqual(payload["status"], "OK")
        self.assert_upscaled(payload["payload"])
        jwks = httpx.get(os.environ["MERIDIAN_URL"] + "/fal/.well-known/jwks.json").json()
        x = jwks["keys"][0]["x"]
        key = Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(x + "=" * (-len(x) % 4)))
        message = "\n".join([
            headers["x-fal-webhook-request-id"],
            headers["x-fal-webhook-user-id"],
            headers["x-fal-webhook-timestamp"],
            hashlib.sha256(body).hexdigest(),
        ]).encode()
        key.verify(bytes.fromhex(headers["x-fal-webhook-signature"]), message)
        with self.assertRaises(Exception):
            key.verify(bytes.fromhex(headers["x-fal-webhook-signature"]), message + b"x")


class OpenAi(unittest.TestCase):
    """OpenAI's images and audio calls through the `openai` SDK (base_url only)."""

    def setUp(self):
        self.client = openai.OpenAI()

    def test_image_generation_in_both_response_formats(self):
        made = self.client.images.generate(
            model=NOISE, prompt="a lighthouse at dusk", size="64x64",
            response_format="b64_json",
        )
        self.assertEqual(png_size(base64.b64decode(made.data[0].b64_json)), (64, 64))
        linked = self.client.images.generate(
            model=NOISE, prompt="a lighthouse at dusk", size="64x64", response_format="url",
        )
        link = fetch_without_key(linked.data[0].url)
        self.assertEqual(link.status_code, 200)
        self.assertEqual(png_size(link.content), (64, 64))

    def test_image_edit_upscales_in_both_response_formats(self):
        want = tuple(2 * s for s in IMAGE_SIZE)
        edited = self.client.images.edit(
            model=UPSCALER, image=("in.png", IMAGE, "image/png"), prompt="sharper",
            response_format="b64_json",
        )
        self.assertEqual(png_size(base64.b64decode(edited.data[0].b64_json)), want)
        linked = self.client.images.edit(
            model=UPSCALER, image=("in.png", IMAGE, "image/png"), prompt="sharper",
            response_format="url",
        )
        self.assertEqual(png_size(fetch_without_key(linked.data[0].url).content), want)

    def test_transcription_in_every_response_format(self):
        audio = speech_wav()
        as_json = self.client.audio.transcriptions.create(
            model=WHISPER, file=("speech.wav", audio, "audio/wav")
        )
        self.assertGreaterEqual(len(words(as_json.text) & words(SENTENCE)), 5, as_json.text)
        as_text = self.client.audio.transcriptions.create(
            model=WHISPER, file=("speech.wav", audio, "audio/wav"), response_format="text"
        )
        self.assertEqual(as_text.strip(), as_json.text.strip())
        verbose = self.client.audio.transcriptions.create(
            model=WHISPER, file=("speech.wav", audio, "audio/wav"),
            response_format="verbose_json",
        )
        self.assertEqual(verbose.text, as_json.text)
        self.assertGreater(verbose.duration, 1.0)
        self.assertGreaterEqual(len(verbose.segments), 1)
        self.assertLess(verbose.segments[0].start, verbose.segments[-1].end)
        for form, first in (("srt", "1\n00:00:"), ("vtt", "WEBVTT\n\n00:00:")):
            subtitles = self.client.audio.transcriptions.create(
                model=WHISPER, file=("speech.wav", audio, "audio/wav"), response_format=form
            )
            self.assertTrue(subtitles.startswith(first), subtitles)
            self.assertIn(" --> ", subtitles)

    def test_an_unknown_model_is_the_sdks_not_found_error(self):
        with self.assertRaises(openai.NotFoundError) as raised:
            self.client.images.generate(model="meridian/no-such-model", prompt="x")
        self.assertIn("no-such-model", str(raised.exception))


    def test_a_model_of_another_kind_is_a_bad_request(self):
        with self.assertRaises(openai.BadRequestError) as raised:
            self.client.images.generate(model=UPSCALER, prompt="x")
        self.assertEqual(raised.exception.code, "model_not_supported")
        # No text-to-audio model is in the catalog yet: speech is refused for every model.
        with self.assertRaises(openai.BadRequestError) as raised:
            self.client.audio.speech.create(model=WHISPER, voice="alloy", input="hello")
        self.assertEqual(raised.exception.code, "model_not_supported")


class Replicate(unittest.TestCase):
    """Replicate's predictions through the `replicate` client (base_url only)."""

    def setUp(self):
        # The base URL and the token come from REPLICATE_BASE_URL and REPLICATE_API_TOKEN.
        self.client = replicate.Client()

    def test_create_with_prefer_wait_answers_the_finished_prediction(self):
        prediction = self.client.models.predictions.create(
            model=UPSCALER, input={"image": data_uri(IMAGE, "image/png")}, wait=True
        )
        self.assertEqual(prediction.status, "succeeded", prediction.error)
        link = fetch_without_key(prediction.output["image"])
        self.assertEqual(png_size(link.content), tuple(2 * s for s in IMAGE_SIZE))

    def test_create_without_wait_then_wait_and_run(self):
        prediction = self.client.models.predictions.create(
            model=UPSCALER, input={"image": data_uri(IMAGE, "image/png")}, wait=False
        )
        self.assertIn(prediction.status, ("starting", "processing", "succeeded"))
        prediction.wait()
        self.assertEqual(prediction.status, "succeeded")
        self.assertIsNotNone(prediction.completed_at)
        # A Python file object, encoded inline by the client.
        with open(FIXTURE, "rb") as image:
            output = self.client.run(
                UPSCALER, input={"image": image}, file_encoding_strategy="base64"
            )
        self.assertEqual(png_size(output["image"].read()), tuple(2 * s for s in IMAGE_SIZE))

    def test_a_webhook_signed_with_the_default_secret(self):
        receiver = Receiver()
        self.addCleanup(receiver.close)
        secret = self.client.webhooks.default.secret()
        self.assertTrue(secret.key.startswith("whsec_"))
        prediction = self.client.models.predictions.create(
            model=UPSCALER,
            input={"image": data_uri(IMAGE, "image/png")},
            webhook=receiver.url,
            webhook_events_filter=["completed"],
        )
        headers, body = receiver.next()
        self.assertTrue(
            self.client.webhooks.validate(
                headers=headers, body=body.decode(), secret=secret, tolerance=300
            )
            in (None, True)
        )
        delivered = json.loads(body)
        self.assertEqual(delivered["id"], prediction.id)
        self.assertEqual(delivered["status"], "succeeded")
        tampered = dict(headers, **{"webhook-id": headers["webhook-id"] + "x"})
        with self.assertRaises(replicate.webhook.InvalidSignatureError):
            self.client.webhooks.validate(
                headers=tampered, body=body.decode(), secret=secret
            )

    def test_cancel(self):
        long_job = {"prompt": "noise", "steps": 50, "width": 256, "height": 256}
        predictions = [
            self.client.models.predictions.create(model=NOISE, input=long_job, wait=False)
            for _ in range(12)
        ]
        last = predictions[-1]
        self.assertEqual(last.status, "starting")
        last.cancel()
        last.reload()
        self.assertEqual(last.status, "canceled")
        for prediction in predictions[:-1]:
            prediction.cancel()


if __name__ == "__main__":
    unittest.main(verbosity=2)
