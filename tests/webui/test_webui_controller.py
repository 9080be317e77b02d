"""The UI's event handlers over a fake backend: turns, images, retry, delete, Stop, limits, failures."""

from __future__ import annotations

import asyncio
import datetime
import json
import re
import threading
import time

import gradio as gr
import pytest
import torch

from webui.app import ChatController, Limits, new_session, reported
from webui.backend import PromptTooLong
from webui.labels import EN, LABELS, ZH
from webui.session import ChatSession, Exchange
from yuren_core.chatml import user_content

SETTINGS = ("You are a test.", 0.9, 0.7, 64, 1.1)


def controller(backend, **limits) -> ChatController:
    return ChatController(backend, EN, Limits(**limits))


def chat(ctl, session, text, files=(), settings=SETTINGS):
    """Run one chat event to the end; return its last (display, message box)."""
    *_, last = ctl.chat({"text": text, "files": list(files)}, session, *settings)
    return last


def texts(display) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]["text"] if "text" in m["content"] else "<file>") for m in display]


def test_chat_streams_and_records_the_turn(fake_backend):
    backend = fake_backend(words=3)
    ctl, session = controller(backend), new_session()
    updates = list(ctl.chat({"text": "hello", "files": []}, session, *SETTINGS))
    assert len(updates) >= 5  # the user's turn at once, then the answer piece by piece
    assert all(box is None for _, box in updates)  # the message box is emptied
    answers = [display[-1]["content"]["text"] for display, _ in updates]
    assert answers[0] == "" and answers[-1] == "echo#1: hello [0 images] word word word "
    assert answers == sorted(answers, key=len)
    call = backend.calls[0]
    assert call["messages"] == [
        {"role": "system", "content": "You are a test."},
        {"role": "user", "content": user_content("hello", 0, "before_text")},
    ]
    assert (call["params"].top_p, call["params"].temperature, call["params"].max_new_tokens) == (0.9, 0.7, 64)


def test_history_and_images_go_back_to_the_model(fake_backend, images):
    backend = fake_backend()
    ctl, session = controller(backend), new_session()
    chat(ctl, session, "what is this?", [str(images["png"])])
    display, _ = chat(ctl, session, "and this?", [str(images["jpeg"])])
    assert texts(display)[:3] == [("user", "<file>"), ("user", "what is this?"), ("assistant", texts(display)[2][1])]
    assert display[0]["content"]["path"] == str(images["png"])
    call = backend.calls[1]
    assert call["images"] == ["image48x32", "image256x256"]
    roles = [m["role"] for m in call["messages"]]
    assert roles == ["system", "user", "assistant", "user"]
    assert call["messages"][2]["content"].startswith("echo#1: what is this?")
    assert call["messages"][3]["content"] == user_content("and this?", 1, "before_text")


def test_retry_regenerates_the_last_answer(fake_backend):
    backend = fake_backend()
    ctl, session = controller(backend), new_session()
    chat(ctl, session, "first")
    chat(ctl, session, "second")
    *_, display = ctl.retry(session, *SETTINGS)
    assert display[-1]["content"]["text"].startswith("echo#3: second")
    assert len(session.exchanges) == 2
    # The retried request saw the same history as the original, without the replaced answer.
    assert backend.calls[2]["messages"] == backend.calls[1]["messages"]


def test_delete_last_and_new_conversation(fake_backend):
    ctl, session = controller(fake_backend()), new_session()
    chat(ctl, session, "one")
    chat(ctl, session, "two")
    display = ctl.delete_last(session)
    assert [m["content"]["text"] for m in display if m["role"] == "user"] == ["one"]
    assert ctl.new_conversation(session) == [] and session.exchanges == []
    with pytest.raises(gr.Error, match="no answer to retry"):
        list(ctl.retry(session, *SETTINGS))


def run_in_thread(ctl, session, text):
    results = {}

    def run():
        results["last"] = chat(ctl, session, text)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, results


def test_stop_ends_only_that_users_generation(fake_backend):
    backend = fake_backend(words=200, delay=0.01)
    ctl = controller(backend)
    alice, bob = new_session(), new_session()
    alice_thread, alice_result = run_in_thread(ctl, alice, "alice here")
    bob_thread, bob_result = run_in_thread(ctl, bob, "bob here")
    time.sleep(0.2)
    ctl.stop(alice)
    alice_thread.join(timeout=5)
    assert not alice_thread.is_alive()
    assert bob_thread.is_alive()  # Bob's answer keeps coming
    bob_thread.join(timeout=10)
    by_user = {call["messages"][-1]["content"][0]["text"]: call for call in backend.calls}
    assert by_user["alice here"]["stopped"] and by_user["alice here"]["pieces"] < 100
    assert not by_user["bob here"]["stopped"] and by_user["bob here"]["pieces"] == 203
    # Each session holds only its own conversation, the stopped answer kept as far as it got.
    assert [e.text for e in alice.exchanges] == ["alice here"] and [e.text for e in bob.exchanges] == ["bob here"]
    assert alice.exchanges[0].answer.startswith("echo") and len(alice.exchanges[0].answer) < len(
        bob.exchanges[0].answer
    )


def test_sessions_start_empty_and_separate():
    first, second = new_session(), new_session()
    assert isinstance(first, ChatSession) and first.exchanges == [] and second.exchanges == []
    generation, stop_event = first.begin()
    first.exchanges.append(Exchange("hello"))
    # What one browser session does shows in no other.
    assert second.exchanges == [] and not second.current(generation)
    second.stop()
    assert not stop_event.is_set() and first.current(generation)


def test_delete_during_generation_stops_it_and_writes_nothing_more(fake_backend):
    backend = fake_backend(words=200, delay=0.01)
    ctl, session = controller(backend), new_session()
    thread, _ = run_in_thread(ctl, session, "doomed")
    time.sleep(0.2)
    ctl.delete_last(session)
    thread.join(timeout=5)
    assert not thread.is_alive() and session.exchanges == []
    assert backend.calls[0]["stop_event"].is_set() and backend.calls[0]["pieces"] < 100


@pytest.mark.parametrize(
    "text, files_of, limits, message",
    [
        ("", (), {}, "Type a message"),
        ("x" * 101, (), {"max_text_chars": 100}, "101 characters, the limit is 100"),
        ("look", ("png", "png", "png"), {"max_images_per_message": 2}, "at most 2 images"),
        ("look", ("bomb_png",), {}, "bomb.png is too large"),
        ("look", ("truncated_jpeg",), {}, "Could not read the image truncated.jpg"),
        ("look", ("tiff",), {}, "unsupported format (TIFF)"),
    ],
)
def test_refused_messages_leave_the_conversation_untouched(fake_backend, images, text, files_of, limits, message):
    backend = fake_backend()
    ctl, session = controller(backend, **limits), new_session()
    with pytest.raises(gr.Error) as refused:
        chat(ctl, session, text, [str(images[kind]) for kind in files_of])
    assert message in refused.value.message
    assert session.exchanges == [] and backend.calls == []


def test_image_limit_per_conversation(fake_backend, images):
    ctl, session = controller(fake_backend(), max_images_per_conversation=2), new_session()
    chat(ctl, session, "a", [str(images["png"])] * 2)
    with pytest.raises(gr.Error, match="limit of 2 images"):
        chat(ctl, session, "b", [str(images["png"])])


def test_text_only_model_refuses_images(fake_backend, images):
    backend = fake_backend()
    backend.supports_images = False
    with pytest.raises(gr.Error, match="reads text only"):
        chat(controller(backend), new_session(), "look", [str(images["png"])])


def test_system_prompt_and_settings_are_checked_server_side(fake_backend):
    ctl, session = controller(fake_backend(), max_system_chars=10), new_session()
    with pytest.raises(gr.Error, match="system prompt is too long"):
        chat(ctl, session, "hi", settings=("s" * 11, 0.9, 0.7, 64, 1.1))
    with pytest.raises(gr.Error, match="temperature must be between"):
        chat(ctl, session, "hi", settings=("s", 0.9, 9.0, 64, 1.1))
    assert session.exchanges == []


def test_too_long_turn_is_given_back_to_the_message_box(fake_backend):
    backend = fake_backend()

    def refuse(messages, images, params, stop_event):
        raise PromptTooLong(5000, 512, 4096)
        yield  # a generator, as real backends are

    backend.stream = refuse
    ctl, session = controller(backend), new_session()
    updates = []
    with pytest.raises(gr.Error) as refused:
        for update in ctl.chat({"text": "very long", "files": []}, session, *SETTINGS):
            updates.append(update)
    assert "5000 tokens" in refused.value.message and "4096" in refused.value.message
    assert updates[-1] == ([], {"text": "very long", "files": []})
    assert session.exchanges == []


def test_out_of_memory_answers_an_error_and_the_next_request_works(fake_backend):
    backend = fake_backend(fail=[torch.OutOfMemoryError("CUDA out of memory"), None])
    ctl, session = controller(backend), new_session()
    with pytest.raises(gr.Error, match="Out of memory"):
        chat(ctl, session, "first")
    display, _ = chat(ctl, session, "second")
    assert display[-1]["content"]["text"].startswith("echo#2: second")


def test_unexpected_failure_is_reported_without_internals(fake_backend):
    ctl, session = controller(fake_backend(fail=KeyError("secret internals"))), new_session()
    with pytest.raises(gr.Error) as failed:
        chat(ctl, session, "hi")
    assert "KeyError" in failed.value.message and "secret" not in failed.value.message


def test_both_languages_have_every_label_with_the_same_fields():
    fields = re.compile(r"{(\w+)")
    for name in ZH.__dataclass_fields__:
        zh, en = getattr(ZH, name), getattr(EN, name)
        assert zh and en, name
        assert zh != en or name == "top_p", name
        assert sorted(set(fields.findall(zh))) == sorted(set(fields.findall(en))), name
    assert set(LABELS) == {"zh", "en"}
    assert "2030-01-02" in ZH.default_system_prompt(datetime.date(2030, 1, 2))


@pytest.mark.parametrize("text, system", [("\ud800", "You are a test."), ("hi", "fine \udfff")])
def test_unencodable_text_is_refused_and_the_conversation_survives(fake_backend, text, system):
    backend = fake_backend()
    ctl, session = controller(backend), new_session()
    chat(ctl, session, "before")
    with pytest.raises(gr.Error, match="cannot be encoded"):
        chat(ctl, session, text, settings=(system, *SETTINGS[1:]))
    assert [exchange.text for exchange in session.exchanges] == ["before"] and len(backend.calls) == 1
    display, _ = chat(ctl, session, "after")
    json.dumps(display, ensure_ascii=False).encode("utf-8")  # what Gradio sends must stay encodable
    assert display[-1]["content"]["text"].startswith("echo#2: after")


@pytest.mark.parametrize(
    "message, settings, detail",
    [
        ("just a string", SETTINGS, "Malformed request"),
        ({"text": 5, "files": []}, SETTINGS, "Malformed request"),
        ({"text": "hi", "files": "/etc/passwd"}, SETTINGS, "Malformed request"),
        ({"text": "hi", "files": []}, ("sys", 0.9, 0.7, float("inf"), 1.1), "Invalid generation settings"),
        ({"text": "hi", "files": []}, (["not", "a", "string"], 0.9, 0.7, 64, 1.1), "Malformed request"),
    ],
)
def test_malformed_api_input_gets_a_message(fake_backend, message, settings, detail):
    ctl, session = controller(fake_backend()), new_session()
    with pytest.raises(gr.Error, match=detail):
        list(ctl.chat(message, session, *settings))
    assert session.exchanges == []


def test_failure_before_the_first_token_takes_the_turn_back(fake_backend):
    backend = fake_backend()
    ctl, session = controller(backend), new_session()
    chat(ctl, session, "first")
    ordinary = backend.stream

    def fail_at_once(messages, images, params, stop_event):
        raise RuntimeError("tokenizer exploded")
        yield  # a generator, as real backends are

    backend.stream = fail_at_once
    updates = []
    with pytest.raises(gr.Error, match="RuntimeError"):
        for update in ctl.chat({"text": "second", "files": []}, session, *SETTINGS):
            updates.append(update)
    assert [exchange.text for exchange in session.exchanges] == ["first"]
    assert updates[-1] == (session.display(), {"text": "second", "files": []})  # the message goes back to the box
    previous = session.exchanges[-1].answer
    with pytest.raises(gr.Error, match="RuntimeError"):
        list(ctl.retry(session, *SETTINGS))
    assert session.exchanges[-1].answer == previous  # a failed retry keeps the answer there was
    backend.stream = ordinary
    display, _ = chat(ctl, session, "third")
    assert display[-1]["content"]["text"].startswith("echo#2: third")


def test_turns_that_can_never_fit_are_dropped_and_the_user_is_told(fake_backend):
    backend = fake_backend()
    backend.max_turns = 2
    ctl, session = controller(backend), new_session()
    for i in range(5):
        display, _ = chat(ctl, session, f"turn {i}")
    assert [exchange.text for exchange in session.exchanges] == ["turn 3", "turn 4"]
    assert sum(m["role"] == "user" for m in backend.calls[-1]["messages"]) == 2
    assert display[0] == {
        "role": "assistant",
        "content": {"type": "text", "text": EN.turns_dropped.format(count=3, context_length=4096)},
    }
    assert texts(display)[1:] == [("user", "turn 3"), texts(display)[2], ("user", "turn 4"), texts(display)[4]]
    ctl.new_conversation(session)
    assert session.display() == [] and session.dropped_turns == 0


def test_unexpected_errors_anywhere_reach_the_caller_with_a_message():
    def broken(session):
        raise KeyError("secret internals")

    def broken_stream(session):
        yield []
        raise ValueError("secret internals")

    async def broken_async(session):
        raise OSError("secret internals")

    with pytest.raises(gr.Error) as failed:
        reported(broken, EN)(new_session())
    assert failed.value.message == EN.internal_error.format(error="KeyError")
    with pytest.raises(gr.Error, match=r"went wrong on the server \(ValueError\)"):
        list(reported(broken_stream, EN)(new_session()))
    with pytest.raises(gr.Error, match=r"\(OSError\)"):
        asyncio.run(reported(broken_async, EN)(new_session()))
    refused = gr.Error("a message of our own")
    with pytest.raises(gr.Error, match="a message of our own"):
        reported(lambda session: (_ for _ in ()).throw(refused), EN)(new_session())
