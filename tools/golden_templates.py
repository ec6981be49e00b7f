#!/usr/bin/env python3
"""Golden chat-template renders for tests/tokenizer/chat_template_test.cc.

Renders a fixed set of conversations through each template in tests/tokenizer/templates/ with
transformers' own chat-template renderer (transformers.utils.chat_template_utils.
render_jinja_template, what apply_chat_template calls) and writes
tests/tokenizer/golden/templates_<name>.json:

    {"template": "gemma4.jinja", "renderer": "transformers 5.x ...",
     "cases": [{"name": ..., "messages": [...], "options": {...}, "expected": "..."}
               | {..., "error": "message of raise_exception"}]}

`options` are the other keyword arguments (tools, add_generation_prompt, bos_token, ...), exactly as
passed to render_jinja_template. Needs no network.

    python3 tools/golden_templates.py --out tests/tokenizer/golden            # transformers
    python3 tools/golden_templates.py --out /tmp/g --replica                  # jinja2 only (dev)
"""
import argparse
import copy
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATES = os.path.join(ROOT, "tests", "tokenizer", "templates")

# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a location.",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "City and country, e.g. Paris, France"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "description": "Unit"},
                "days": {"type": "integer", "description": "Forecast days", "nullable": True},
            },
            "required": ["location"],
        },
    },
}

SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": "search_flights",
        "description": "Search flights between airports.",
        "parameters": {
            "type": "object",
            "properties": {
                "route": {
                    "type": "object",
                    "description": "Origin and destination",
                    "properties": {
                        "from": {"type": "string", "description": "IATA code"},
                        "to": {"type": "string", "description": "IATA code"},
                    },
                    "required": ["from", "to"],
                },
                "passengers": {
                    "type": "array",
                    "description": "Passengers",
                    "items": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string"},
                            "age": {"type": "number", "description": "Age in years"},
                        },
                        "required": ["name"],
                    },
                },
                "cabin": {"type": ["string", "null"], "enum": ["economy", "business"]},
                "flexible": {"type": "boolean", "description": "Allow ±1 day"},
                "tags": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["route", "passengers"],
        },
        "response": {"type": "object", "description": "Matching flights"},
    },
}

CALC_TOOL = {
    "type": "function",
    "function": {
        "name": "calculate",
        "description": "Evaluate an arithmetic expression.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "e.g. 2*(3+4)"}},
            "required": ["expression"],
        },
    },
}

NO_PARAM_TOOL = {"type": "function", "function": {"name": "get_time", "description": "Current UTC time."}}


def U(text):
    return {"role": "user", "content": text}


def A(text):
    return {"role": "assistant", "content": text}


def S(text):
    return {"role": "system", "content": text}


def call(name, args, cid=None):
    tc = {"type": "function", "function": {"name": name, "arguments": args}}
    if cid is not None:
        tc["id"] = cid
    return tc


# --------------------------------------------------------------------------------------------
# Per-template case lists: (name, messages, options)
# --------------------------------------------------------------------------------------------


def gemma4_cases():
    bos = {"bos_token": "<bos>", "eos_token": "<eos>"}
    c = []
    c.append(("user_only_gen", [U("Hello!")], {"add_generation_prompt": True}))
    c.append(("user_only_nogen", [U("Hello!")], {"add_generation_prompt": False}))
    c.append(("system_multiturn", [S("  You are terse.  "), U("Hi"), A("Hello."), U("Bye\n")],
              {"add_generation_prompt": True}))
    c.append(("developer_role", [{"role": "developer", "content": "Follow the rules."}, U("What rules?")],
              {"add_generation_prompt": True}))
    c.append(("thinking_on", [U("Solve 2+2")], {"add_generation_prompt": True, "enable_thinking": True}))
    c.append(("thinking_off", [U("Solve 2+2")], {"add_generation_prompt": True, "enable_thinking": False}))
    c.append(("thinking_on_system", [S("Be careful."), U("Solve 3*3")],
              {"add_generation_prompt": True, "enable_thinking": True}))
    c.append(("strip_thinking_history", [
        U("What is 6*7?"),
        A("<|channel>thought\nSix sevens... 42.<channel|>The answer is 42."),
        U("And 7*8?"),
    ], {"add_generation_prompt": True, "enable_thinking": True}))
    c.append(("strip_thinking_multi", [
        U("Q1"),
        A("  <|channel>thought\nA<channel|>Part one. <|channel>thought\nB<channel|>Part two.  "),
        U("Q2"),
    ], {"add_generation_prompt": False}))
    c.append(("tools_simple", [U("Weather in Paris?")], {"tools": [WEATHER_TOOL], "add_generation_prompt": True}))
    c.append(("tools_nested", [S("You book flights."), U("Find LHR to JFK for 2")],
              {"tools": [SEARCH_TOOL, WEATHER_TOOL, NO_PARAM_TOOL], "add_generation_prompt": True}))
    c.append(("tool_call_and_response", [
        U("Weather in Paris?"),
        {"role": "assistant", "content": "", "tool_calls": [call("get_weather", {"location": "Paris, France", "unit": "celsius"})]},
        {"role": "tool", "tool_responses": [{"name": "get_weather", "response": {"temperature": 21.5, "sky": "clear", "ok": True}}]},
    ], {"tools": [WEATHER_TOOL], "add_generation_prompt": True}))
    c.append(("tool_call_nested_args", [
        U("Book it"),
        {"role": "assistant", "tool_calls": [call("search_flights", {
            "route": {"from": "LHR", "to": "JFK"},
            "passengers": [{"name": "Ana", "age": 31}, {"name": "Bo", "age": 4.5}],
            "flexible": False, "cabin": None, "tags": ["a", "b\"c"]})]},
        {"role": "tool", "tool_responses": [{"name": "search_flights", "response": [1, 2.0, "x", None]}]},
        A("Found 2 flights."),
    ], {"tools": [SEARCH_TOOL], "add_generation_prompt": False}))
    c.append(("tool_call_string_args", [
        U("time?"),
        {"role": "assistant", "content": "Checking.", "tool_calls": [call("get_time", "{\"tz\": \"UTC\"}")]},
        {"role": "tool", "tool_responses": [{"name": "get_time", "response": "12:00"}]},
    ], {"tools": [NO_PARAM_TOOL], "add_generation_prompt": True}))
    c.append(("tool_response_unnamed", [
        U("x"),
        {"role": "assistant", "tool_calls": [call("calculate", {"expression": "1+1"})]},
        {"role": "tool", "tool_responses": [{"response": {"result": 2}}], "content": "extra"},
    ], {"tools": [CALC_TOOL], "add_generation_prompt": True}))
    c.append(("parallel_tool_calls", [
        U("Weather in Paris and Rome"),
        {"role": "assistant", "tool_calls": [call("get_weather", {"location": "Paris"}), call("get_weather", {"location": "Rome", "days": 3})]},
        {"role": "tool", "tool_responses": [{"name": "get_weather", "response": {"t": 20}}, {"name": "get_weather", "response": {"t": 25}}]},
    ], {"tools": [WEATHER_TOOL], "add_generation_prompt": True, "enable_thinking": True}))
    c.append(("image_items", [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "  Describe this.  "}]},
    ], {"add_generation_prompt": True}))
    c.append(("image_url_and_audio_video", [
        {"role": "user", "content": [{"type": "text", "text": "Compare"}, {"type": "image_url", "image_url": {"url": "http://x/y.png"}},
                                     {"type": "audio"}, {"type": "video"}, {"type": "image"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "<|channel>thought\nhmm<channel|>They differ."}]},
        U("ok"),
    ], {"add_generation_prompt": True}))
    c.append(("unicode_content", [S("Réponds en français 🇫🇷"), U("¿Qué tal? 你好 \u2028 tab\there"), A("Très bien ✓")],
              {"add_generation_prompt": True}))
    c.append(("system_list_content_trimmed", [S("\n\nsys\n\n"), U("  padded  ")], {"add_generation_prompt": False}))
    c.append(("no_bos_kwargs", [U("hi")], {"add_generation_prompt": True, "_no_special": True}))
    for name, msgs, opts in c:
        if not opts.pop("_no_special", False):
            opts.update(bos)
    return c


def gemma3_cases():
    sp = {"bos_token": "<bos>", "eos_token": "<eos>"}
    c = [
        ("user_gen", [U("Hello")], {"add_generation_prompt": True}),
        ("user_nogen", [U("Hello")], {"add_generation_prompt": False}),
        ("system_string", [S("Be brief."), U("Hi"), A("Hello!"), U("Bye")], {"add_generation_prompt": True}),
        ("system_list", [{"role": "system", "content": [{"type": "text", "text": "Sys list."}]}, U("Q")], {"add_generation_prompt": True}),
        ("multi_turn", [U("1"), A("2"), U("3"), A("4"), U("5")], {"add_generation_prompt": True}),
        ("image_first", [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": " What is this? "}]}], {"add_generation_prompt": True}),
        ("image_middle", [{"role": "user", "content": [{"type": "text", "text": "A"}, {"type": "image", "url": "x"}, {"type": "text", "text": "B"}]}], {"add_generation_prompt": False}),
        ("assistant_list", [U("q"), {"role": "assistant", "content": [{"type": "text", "text": "  a  "}]}], {"add_generation_prompt": False}),
        ("trim_whitespace", [U("\n\n  spaced  \n"), A("\tanswer\t")], {"add_generation_prompt": True}),
        ("unicode", [U("Grüße 👋 — “quotes”"), A("日本語")], {"add_generation_prompt": False}),
        ("system_with_image_user", [S("You see images."), {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "diff?"}]}], {"add_generation_prompt": True}),
        ("error_two_users", [U("a"), U("b")], {"add_generation_prompt": True}),
        ("error_assistant_first", [A("a")], {"add_generation_prompt": True}),
        ("error_bad_content", [{"role": "user", "content": 42}], {"add_generation_prompt": True}),
        ("long_conversation", [m for i in range(6) for m in (U(f"question {i}"), A(f"answer {i}"))], {"add_generation_prompt": True}),
        ("empty_content", [U(""), A("")], {"add_generation_prompt": True}),
        ("tools_ignored", [U("hi")], {"add_generation_prompt": True, "tools": [WEATHER_TOOL]}),
        ("extra_kwargs", [U("hi")], {"add_generation_prompt": True, "enable_thinking": True}),
        ("system_only", [S("only system")], {"add_generation_prompt": True}),
        ("markup_like", [U("<b>{{ not jinja }}</b> {% raw %}")], {"add_generation_prompt": True}),
        ("newlines", [U("line1\nline2\r\nline3"), A("x\n")], {"add_generation_prompt": False}),
    ]
    for _, _, o in c:
        o.update(sp)
    return c


def llama3_cases():
    sp = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
    c = [
        ("user_gen", [U("Hello")], {"add_generation_prompt": True}),
        ("user_nogen", [U("Hello")], {}),
        ("system", [S("  You are helpful.  "), U("Hi"), A("Hello!"), U("Bye")], {"add_generation_prompt": True}),
        ("date_string", [U("What day is it?")], {"add_generation_prompt": True, "date_string": "01 Jan 2025"}),
        ("tools_in_user", [S("sys"), U("Weather in Paris?")], {"add_generation_prompt": True, "tools": [WEATHER_TOOL]}),
        ("tools_in_system", [S("sys"), U("Weather in Paris?")], {"add_generation_prompt": True, "tools": [WEATHER_TOOL, SEARCH_TOOL], "tools_in_user_message": False}),
        ("tool_call_roundtrip", [
            U("Weather in Paris?"),
            {"role": "assistant", "tool_calls": [call("get_weather", {"location": "Paris", "unit": "celsius"})]},
            {"role": "tool", "content": {"temperature": 21.5, "unit": "C", "note": "ünïcode"}},
            A("It is 21.5C."),
        ], {"add_generation_prompt": False, "tools": [WEATHER_TOOL]}),
        ("tool_string_content", [
            U("calc 1+1"),
            {"role": "assistant", "tool_calls": [call("calculate", {"expression": "1+1"})]},
            {"role": "tool", "content": "2"},
        ], {"add_generation_prompt": True, "tools": [CALC_TOOL]}),
        ("ipython_role", [U("q"), {"role": "assistant", "tool_calls": [call("calculate", {"expression": "x"})]}, {"role": "ipython", "content": [1, 2, {"a": None}]}],
         {"add_generation_prompt": True, "tools": [CALC_TOOL]}),
        ("builtin_tools", [S("sys"), U("search cats")], {"add_generation_prompt": True, "builtin_tools": ["brave_search", "wolfram_alpha", "code_interpreter"]}),
        ("builtin_tool_call", [
            U("search cats"),
            {"role": "assistant", "tool_calls": [call("brave_search", {"query": "cats", "lang": "en"})]},
            {"role": "ipython", "content": "results"},
        ], {"add_generation_prompt": True, "builtin_tools": ["brave_search"]}),
        ("custom_tools", [U("hi")], {"add_generation_prompt": True, "custom_tools": [CALC_TOOL]}),
        ("error_two_tool_calls", [U("q"), {"role": "assistant", "tool_calls": [call("a", {}), call("b", {})]}], {"tools": [CALC_TOOL]}),
        ("error_tools_no_user", [S("sys")], {"tools": [CALC_TOOL]}),
        ("unicode", [U("¿Dónde está? 🏖️"), A("Aquí — “here”")], {"add_generation_prompt": True}),
        ("multi_turn", [m for i in range(4) for m in (U(f"q{i}"), A(f" a{i} "))], {"add_generation_prompt": True}),
        ("nested_args_tojson", [
            U("book"),
            {"role": "assistant", "tool_calls": [call("search_flights", {"route": {"from": "LHR", "to": "JFK"}, "passengers": [{"name": "A", "age": 1.0}], "flexible": True, "cabin": None})]},
        ], {"tools": [SEARCH_TOOL]}),
        ("float_formats", [U("x"), {"role": "assistant", "tool_calls": [call("calculate", {"a": 1e16, "b": 0.0001, "c": 1e-05, "d": -0.0, "e": 123456789.125, "f": 1e300, "g": 2**53})]}],
         {"tools": [CALC_TOOL]}),
        ("escapes_tojson", [U("x"), {"role": "assistant", "tool_calls": [call("calculate", {"s": "tab\t nl\n quote\" bs\\ ctrl\u0001 del\u007f é 😀 \u2028"})]}],
         {"tools": [CALC_TOOL]}),
        ("empty_tools_list", [U("hi")], {"add_generation_prompt": True, "tools": []}),
        ("system_only", [S("just system")], {"add_generation_prompt": True}),
    ]
    for _, _, o in c:
        o.update(sp)
    return c


def qwen3_cases():
    sp = {"bos_token": None, "eos_token": "<|im_end|>"}
    c = [
        ("user_gen", [U("Hello")], {"add_generation_prompt": True}),
        ("user_nogen", [U("Hello")], {}),
        ("system", [S("You are Qwen."), U("Hi")], {"add_generation_prompt": True}),
        ("enable_thinking_false", [U("Hi")], {"add_generation_prompt": True, "enable_thinking": False}),
        ("enable_thinking_true", [U("Hi")], {"add_generation_prompt": True, "enable_thinking": True}),
        ("think_history", [U("2+2?"), A("<think>\nadd\n</think>\n\n4"), U("3+3?")], {"add_generation_prompt": True}),
        ("think_last_assistant", [U("2+2?"), A("<think>\nadd them\n</think>\n\n4")], {}),
        ("reasoning_content_field", [U("q"), {"role": "assistant", "content": "answer", "reasoning_content": "\nthe reasoning\n"}], {}),
        ("tools", [S("sys"), U("Weather?")], {"add_generation_prompt": True, "tools": [WEATHER_TOOL, SEARCH_TOOL]}),
        ("tools_no_system", [U("Weather?")], {"add_generation_prompt": True, "tools": [CALC_TOOL]}),
        ("tool_call_roundtrip", [
            U("Weather in Paris?"),
            {"role": "assistant", "content": "", "tool_calls": [call("get_weather", {"location": "Paris", "unit": "celsius"})]},
            {"role": "tool", "content": "{\"temperature\": 21}"},
            A("21 degrees."),
        ], {"add_generation_prompt": True, "tools": [WEATHER_TOOL]}),
        ("parallel_calls_and_responses", [
            U("Paris and Rome?"),
            {"role": "assistant", "content": "Let me check.", "tool_calls": [call("get_weather", {"location": "Paris"}), call("get_weather", {"location": "Rome", "days": 2})]},
            {"role": "tool", "content": "20"},
            {"role": "tool", "content": "25"},
        ], {"add_generation_prompt": True, "tools": [WEATHER_TOOL]}),
        ("tool_call_string_arguments", [
            U("calc"),
            {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "calculate", "arguments": "{\"expression\": \"1+1\"}"}}]},
            {"role": "tool", "content": "2"},
        ], {"add_generation_prompt": True, "tools": [CALC_TOOL]}),
        ("tool_call_no_function_wrapper", [
            U("calc"),
            {"role": "assistant", "content": "", "tool_calls": [{"name": "calculate", "arguments": {"expression": "2*3"}}]},
        ], {"tools": [CALC_TOOL]}),
        ("multi_step_tool", [
            U("Plan a trip"),
            {"role": "assistant", "content": "<think>\nneed weather\n</think>\n\nChecking", "tool_calls": [call("get_weather", {"location": "Oslo"})]},
            {"role": "tool", "content": "cold"},
            {"role": "assistant", "content": "<think>\nnow flights\n</think>\n\nSearching", "tool_calls": [call("search_flights", {"route": {"from": "OSL", "to": "BER"}, "passengers": []})]},
            {"role": "tool", "content": "none"},
        ], {"add_generation_prompt": True, "tools": [WEATHER_TOOL, SEARCH_TOOL]}),
        ("user_tool_response_text", [U("<tool_response>\nx\n</tool_response>"), A("ok")], {"add_generation_prompt": True}),
        ("second_system_message", [S("first"), U("q"), S("second"), A("a")], {}),
        ("unicode_tojson", [U("x"), {"role": "assistant", "content": "", "tool_calls": [call("calculate", {"expression": "π·r² — ünïcödé 😀", "n": [1, 2.5, True, None]})]}],
         {"tools": [CALC_TOOL]}),
        ("multi_turn_thinking_strip", [U("a"), A("<think>r1</think>x1"), U("b"), A("<think>\nr2\n</think>\n\nx2"), U("c")], {"add_generation_prompt": True, "enable_thinking": False}),
        ("error_content_list", [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], {"add_generation_prompt": True}),
        ("empty_assistant", [U("q"), A("")], {"add_generation_prompt": True}),
    ]
    for _, _, o in c:
        o.update(sp)
    return c


def mistral_cases():
    sp = {"bos_token": "<s>", "eos_token": "</s>"}
    c = [
        ("user", [U("Hello")], {}),
        ("user_gen_flag_ignored", [U("Hello")], {"add_generation_prompt": True}),
        ("system_last_user", [S("Be nice."), U("Hi"), A("Hello!"), U("Bye")], {}),
        ("multi_turn", [U("1"), A("2"), U("3"), A("4")], {}),
        ("tools", [U("Weather?")], {"tools": [WEATHER_TOOL, SEARCH_TOOL]}),
        ("tools_with_history", [U("first"), A("reply"), U("Weather in Paris?")], {"tools": [WEATHER_TOOL]}),
        ("tool_call_roundtrip", [
            U("Weather in Paris?"),
            {"role": "assistant", "tool_calls": [call("get_weather", {"location": "Paris"}, "abcDEF123")]},
            {"role": "tool", "tool_call_id": "abcDEF123", "content": "{\"t\": 21}"},
            A("21C."),
        ], {"tools": [WEATHER_TOOL]}),
        ("tool_result_dict_repr", [
            U("Weather?"),
            {"role": "assistant", "tool_calls": [call("get_weather", {"location": "Nice"}, "A1b2C3d4E")]},
            {"role": "tool", "tool_call_id": "A1b2C3d4E", "content": {"temp": 21.5, "ok": True, "none": None, "list": [1, "two", 3.0], "text": "it's \"quoted\" ü\n"}},
        ], {"tools": [WEATHER_TOOL]}),
        ("tool_result_nested_content", [
            U("Weather?"),
            {"role": "assistant", "tool_calls": [call("get_weather", {"location": "Nice"}, "A1b2C3d4E")]},
            {"role": "tool", "tool_call_id": "A1b2C3d4E", "content": {"content": ["x", 'y\'s']}},
        ], {}),
        ("parallel_calls", [
            U("Paris and Rome?"),
            {"role": "assistant", "tool_calls": [call("get_weather", {"location": "Paris"}, "aaaaaaaa1"), call("get_weather", {"location": "Rome"}, "aaaaaaaa2")]},
            {"role": "tool", "tool_call_id": "aaaaaaaa1", "content": "20"},
            {"role": "tool", "tool_call_id": "aaaaaaaa2", "content": "25"},
        ], {"tools": [WEATHER_TOOL]}),
        ("tool_results_role", [U("x"), {"role": "assistant", "tool_calls": [call("calculate", {"expression": "1"}, "123456789")]}, {"role": "tool_results", "tool_call_id": "123456789", "content": 1}], {}),
        ("error_bad_id", [U("x"), {"role": "assistant", "tool_calls": [call("calculate", {"expression": "1"}, "short")]}], {}),
        ("error_alternation", [U("a"), U("b")], {}),
        ("error_unknown_role", [U("a"), {"role": "critic", "content": "c"}], {}),
        ("unicode", [U("Ça va? 😀"), A("Oui — très bien")], {}),
        ("tool_with_return_key", [U("t")], {"tools": [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object", "properties": {}}, "return": {"type": "string"}}}]}),
        ("system_only_user", [S("sys"), U("only")], {"tools": [CALC_TOOL]}),
        ("duplicate_user_messages", [U("same"), A("r"), U("same")], {"tools": [CALC_TOOL]}),
        ("empty_messages_content", [U(""), A("")], {}),
        ("tool_call_null_tools", [U("x"), {"role": "assistant", "tool_calls": [call("calculate", {"expression": "2", "nested": {"k": [1, {"z": None}]}}, "abcdefghi")]}], {}),
        ("long_conversation", [m for i in range(5) for m in (U(f"u{i}"), A(f"a{i}"))], {}),
    ]
    for _, _, o in c:
        o.update(sp)
    return c




# Small templates exercising the interpreter feature by feature (rendered with messages=[] unless
# the variables set them). (name, template source, variables)
FEATURES = [
    ("ws_trim_lstrip", "a\n  {% if true %}\n    b\n  {% endif %}\nc\n", {}),
    ("ws_minus", "a   {%- if true -%}   b   {%- endif -%}   c", {}),
    ("ws_plus", "a\n  {%+ if true +%}\nb\n{% endif %}", {}),
    ("ws_comment", "x\n  {# note #}\ny {#- tight -#} z\n{# c #}w", {}),
    ("ws_var_no_trim", "{{ 'a' }}\n  {{ 'b' }}\n", {}),
    ("ws_trailing_newlines", "text\n\n", {}),
    ("ws_crlf", "a\r\n{% if true %}\r\nb\r\n{% endif %}\r\n", {}),
    ("raw_block", "{% raw %}{{ not rendered }}{% endraw %}|{%- raw -%}  x  {%- endraw -%}|", {}),
    ("literals", "{{ 1 }} {{ 1.0 }} {{ -0.5 }} {{ 1e3 }} {{ 10/4 }} {{ 7//2 }} {{ -7//2 }} {{ -7 % 3 }} {{ 2**10 }} {{ 2**-1 }} {{ 1_000 }}", {}),
    ("float_repr", "{{ x }}|{{ y }}|{{ z }}|{{ w }}|{{ 0.1 + 0.2 }}|{{ 1/3 }}|{{ 3.0 * 2 }}", {"x": 1e16, "y": 1.5e-7, "z": 123.456, "w": 1e22}),
    ("none_bool_print", "{{ none }} {{ true }} {{ false }} {{ x }} [{{ undefined_var }}]", {"x": None}),
    ("string_escapes", "{{ 'a\\nb\\tc\\\\d\\'e' }}|{{ \"q\\\"x\" }}|{{ '\\u00e9\\x41' }}|{{ 'adj' 'acent' }}", {}),
    ("concat_tilde", "{{ 'a' ~ 1 ~ none ~ true ~ 1.5 ~ [1] }}", {}),
    ("repr_containers", "{{ [1, 'a', none, true, 1.5] }} {{ {'k': 'v', 'n': [1, 2]} }} {{ ('t',) }} {{ (1, 2) }} {{ x }}", {"x": {"q": "it's", "d": "say \"hi\"", "both": "'\"", "nl": "a\nb", "u": "é\u2028"}}),
    ("arith_mixed", "{{ 1 + 2.5 }} {{ true + 1 }} {{ 'ab' * 3 }} {{ [1] * 2 }} {{ [1] + [2] }} {{ 5 - 2 }} {{ 2 * 3.0 }}", {}),
    ("compare", "{{ 1 < 2 }} {{ 'a' < 'b' }} {{ 1 == 1.0 }} {{ 'a' == 1 }} {{ [1,2] == [1,2] }} {{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ none == none }} {{ x == y }}", {"x": {"a": 1, "b": 2}, "y": {"b": 2, "a": 1}}),
    ("in_not_in", "{{ 'a' in 'cat' }} {{ 2 in [1,2] }} {{ 'k' in {'k': 1} }} {{ 'z' not in 'cat' }} {{ 1 in [true] }}", {}),
    ("logic_values", "{{ 0 or 'x' }} {{ 'a' and 'b' }} {{ '' and 'b' }} {{ not [] }} {{ none or [] }}", {}),
    ("ternary", "{{ 'y' if x else 'n' }} {{ 'y' if not x else 'n' }} [{{ 'only' if false }}]", {"x": [0]}),
    ("truthiness", "{% for v in [0, 1, '', 'a', [], [0], {}, {'a': 1}, none, 0.0, 0.1] %}{{ 'T' if v else 'F' }}{% endfor %}", {}),
    ("tests", "{% for v in [1, 1.5, 'a', true, none, [1], {'a': 1}] %}{{ v is number }}{{ v is integer }}{{ v is float }}{{ v is string }}{{ v is boolean }}{{ v is none }}{{ v is sequence }}{{ v is mapping }}{{ v is iterable }}{{ v is defined }};{% endfor %}", {}),
    ("tests_args", "{{ 6 is divisibleby 3 }} {{ 7 is divisibleby(3) }} {{ 3 is odd }} {{ 4 is even }} {{ 'abc' is lower }} {{ 'ABC' is upper }} {{ 2 is eq 2 }} {{ 1 is lt 2 }} {{ 'a' is in 'abc' }} {{ x is undefined }} {{ none is not none }} {{ true is true }} {{ 0 is false }}", {}),
    ("filters_str", "{{ ' Hi There ' | trim }}|{{ 'xxhixx' | trim('x') }}|{{ 'hello world-foo (bar) [baz]' | title }}|{{ 'hELLO' | capitalize }}|{{ 'MiX' | lower }}{{ 'MiX' | upper }}|{{ 'aaa' | replace('a', 'b', 2) }}|{{ 'abc' | reverse }}|{{ 'abc' | length }}|{{ 'héllo' | length }}", {}),
    ("filters_list", "{{ [3, 1, 2] | sort }} {{ ['b', 'A', 'c'] | sort }} {{ ['b', 'A', 'c'] | sort(case_sensitive=true) }} {{ [3,1,2] | sort(reverse=true) }} {{ [1,2,3] | first }} {{ [1,2,3] | last }} {{ [1,2,3] | sum }} {{ [1,2,3] | min }} {{ [1,2,3] | max }} {{ ['a','A','b'] | unique | list }} {{ [1,2,3] | reverse | list }} {{ 'abc' | list }}", {}),
    ("filters_join_map", "{{ [1, 2, 3] | join(', ') }}|{{ users | map(attribute='name') | join('/') }}|{{ ['a','b'] | map('upper') | list }}|{{ users | map(attribute='age', default=0) | list }}|{{ users | join(',', attribute='name') }}", {"users": [{"name": "ann", "age": 3}, {"name": "bob"}]}),
    ("filters_select", "{{ users | selectattr('admin') | map(attribute='name') | list }} {{ users | rejectattr('admin') | map(attribute='name') | list }} {{ users | selectattr('role', 'equalto', 'x') | list | length }} {{ [1,2,3,4] | select('odd') | list }} {{ [1,2,3,4] | reject('even') | list }} {{ [0,1,'',none,'a'] | select | list }} {{ users | selectattr('name', 'in', ['bob']) | list | length }}", {"users": [{"name": "ann", "admin": True, "role": "x"}, {"name": "bob", "admin": False, "role": "y"}]}),
    ("filters_dict", "{% for k, v in d | dictsort %}{{ k }}={{ v }};{% endfor %}|{% for k, v in d | dictsort(by='value') %}{{ k }};{% endfor %}|{% for k, v in d | dictsort(reverse=true) %}{{ k }};{% endfor %}|{% for k, v in d | items %}{{ k }}{% endfor %}|{% for k, v in d.items() %}{{ k }}{% endfor %}|{{ d.keys() | list }}|{{ d.values() | list }}|{{ d.get('b') }}{{ d.get('zz', 'def') }}{{ d.get('zz') }}", {"d": {"b": 2, "a": 3, "C": 1}}),
    ("filters_default", "{{ x | default('dx') }} {{ none | default('dn') }} {{ '' | default('de', true) }} {{ y | d('dy') }} {{ z | default(none) }}", {"y": 0}),
    ("filters_numbers", "{{ '42' | int }} {{ '4.7' | int }} {{ 'x' | int }} {{ 'x' | int(7) }} {{ 3.9 | int }} {{ '2.5' | float }} {{ 2 | float }} {{ -3 | abs }} {{ 2.567 | round(2) }} {{ 2.5 | round }} {{ 3 | round }} {{ 2.1 | round(0, 'ceil') }} {{ 42 | string }} {{ 1.0 | string }}", {}),
    ("filters_tojson", "{{ x | tojson }}|{{ x | tojson(indent=2) }}|{{ x | tojson(sort_keys=true) }}|{{ [] | tojson(indent=2) }}|{{ {} | tojson }}|{{ 'é\"<>&' | tojson }}|{{ x | tojson(separators=(',', ':')) }}", {"x": {"z": [1, 2.0, None, True, "s"], "a": {"n": {}}, "u": "ü\n\u0007"}}),
    ("filters_indent", "{{ 'a\nb\n\nc' | indent }}|{{ 'a\nb' | indent(2, true) }}|{{ 'a\n\nb' | indent(2, blank=true) }}|{{ 'x\ny' | indent('> ') }}", {}),
    ("filter_misc", "{{ '<a>' | e }} {{ '<a>' | safe }} {{ 'ab' | center(6) }}|{{ 'a b  c' | wordcount }} {{ x | attr('k') }} {{ [1,2] | count }}", {"x": {"k": "v"}}),
    ("string_methods", "{{ 'a,b,,c'.split(',') }} {{ ' a  b '.split() }} {{ 'a b c'.split(' ', 1) }} {{ 'a,b,c'.rsplit(',', 1) }} {{ 'xhix'.strip('x') }} {{ '  l'.lstrip() }}|{{ 'r  '.rstrip() }}| {{ 'abc'.startswith('ab') }} {{ 'abc'.endswith(('x', 'c')) }} {{ 'aXa'.replace('a', 'b') }} {{ 'hello world'.title() }} {{ 'abc'.upper() }} {{ 'abcb'.find('b') }} {{ 'abcb'.rfind('b') }} {{ 'abcb'.count('b') }} {{ '-'.join(['x', 'y']) }} {{ '12'.isdigit() }} {{ 'a\nb'.splitlines() }} {{ '{} and {}'.format(1, 'two') }}", {}),
    ("slicing", "{{ 'hello'[1:] }} {{ 'hello'[:-1] }} {{ 'hello'[::-1] }} {{ 'héllo'[1:3] }} {{ [1,2,3,4,5][1:4] }} {{ [1,2,3,4,5][::2] }} {{ [1,2,3][-1] }} {{ 'abc'[0] }} {{ [1,2,3][5:] }} {{ [1,2,3,4][-2:] }} {{ [1,2,3,4][3:0:-1] }}", {}),
    ("attr_and_item", "{{ d.a }} {{ d['a'] }} {{ d.missing is defined }} {{ d['missing'] is defined }} {{ l.0 }} {{ l[1] }} {{ l[9] is defined }} {{ d.items is defined }} {{ n.x is defined }}", {"d": {"a": 1}, "l": [10, 20], "n": None}),
    ("loop_vars", "{% for x in ['a', 'b', 'c'] %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.previtem | default('-') }}{{ loop.nextitem | default('-') }}{{ loop.cycle('o', 'e') }};{% endfor %}", {}),
    ("loop_else_filter", "{% for x in [] %}x{% else %}empty{% endfor %}|{% for x in [1,2,3,4] if x is even %}{{ x }}{{ loop.index }}{{ loop.length }}{% endfor %}|{% for x in [1] if x > 5 %}x{% else %}none{% endfor %}", {}),
    ("loop_break_continue", "{% for x in range(10) %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 5 %}{% break %}{% endif %}{{ x }}{% endfor %}", {}),
    ("loop_unpack_dict_iter", "{% for a, b in [[1, 2], (3, 4)] %}{{ a }}{{ b }}{% endfor %}|{% for k in {'x': 1, 'y': 2} %}{{ k }}{% endfor %}|{% for c in 'hé' %}[{{ c }}]{% endfor %}|{% for x in undefined_thing %}x{% endfor %}", {}),
    ("loop_scoping", "{% set x = 1 %}{% for i in [1, 2] %}{{ x }}{% set x = x + 10 %}{{ x }};{% endfor %}{{ x }}", {}),
    ("nested_loops", "{% for i in range(3) %}{% for j in range(i) %}{{ i }}{{ j }}{{ loop.index }} {% endfor %}{{ loop.index }}|{% endfor %}", {}),
    ("range_variants", "{{ range(3) | list }} {{ range(1, 4) | list }} {{ range(10, 0, -3) | list }} {{ range(0) | list }}", {}),
    ("set_forms", "{% set a, b = 1, 2 %}{{ a }}{{ b }}{% set t = (1, 2) %}{{ t }}{% set c %}block {{ a }}{% endset %}[{{ c }}]{% set ns = namespace(n=0, l=[]) %}{% for i in range(3) %}{% set ns.n = ns.n + i %}{% set ns.l = ns.l + [i] %}{% endfor %}{{ ns.n }}{{ ns.l }}", {}),
    ("macros", "{% macro greet(name, greeting='Hello', punct='!') %}{{ greeting }}, {{ name }}{{ punct }}{% endmacro %}{{ greet('A') }} {{ greet('B', 'Hi') }} {{ greet('C', punct='?') }} {{ greet(name='D', greeting='Yo') }} [{{ greet() }}]", {}),
    ("macro_recursion", "{% macro fact(n) %}{% if n <= 1 %}1{% else %}{{ n * (fact(n - 1) | int) }}{% endif %}{% endmacro %}{{ fact(10) }}", {}),
    ("macro_outer_scope", "{% set g = 'global' %}{% macro m() %}{{ g }}{{ later }}{% endmacro %}{% set later = '+later' %}{{ m() }}", {}),
    ("call_block", "{% macro wrap(tag) %}<{{ tag }}>{{ caller() }}</{{ tag }}>{% endmacro %}{% call wrap('b') %}inner {{ 1 + 1 }}{% endcall %}", {}),
    ("filter_block_with", "{% filter upper %}shout {{ 'this' }}{% endfilter %}|{% with a = 1, b = 'x' %}{{ a }}{{ b }}{% endwith %}{{ a is defined }}", {}),
    ("generation_tag", "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}{% else %}{{ m.content }}{% endif %}|{% endfor %}", {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}),
    ("dict_literal_order", "{% set d = {'z': 1, 'a': 2, 'm': 3} %}{% for k in d %}{{ k }}{% endfor %} {{ d | tojson }} {{ dict(b=1, a=2) }}", {}),
    ("json_key_order", "{{ tools[0] | tojson }}|{% for k, v in tools[0].function.parameters.properties.items() %}{{ k }},{% endfor %}", {"tools": [{"type": "function", "function": {"name": "n", "parameters": {"type": "object", "properties": {"zeta": {"type": "string"}, "alpha": {"type": "integer"}, "mid": {}}}}}]}),
    ("unicode_ops", "{{ 'ÉCOLE' | lower }} {{ 'straße' | upper }} {{ 'ñandú' | capitalize }} {{ '日本語' | length }} {{ '日本語'[1] }} {{ '😀x'[0] }} {{ 'naïve café' | title }}", {}),
    ("whitespace_unicode_trim", "[{{ '\u00a0 x \u3000' | trim }}] [{{ '\u2003y\u2003'.strip() }}]", {}),
    ("messages_typical", "{{ bos_token }}{% for m in messages %}{% if loop.first and m.role != 'system' %}[no system]{% endif %}<{{ m.role }}>{{ m.content | trim }}</{{ m.role }}>\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}", {"bos_token": "<s>", "messages": [{"role": "user", "content": " hi "}, {"role": "assistant", "content": "yo"}], "add_generation_prompt": True}),
    ("tools_none_default", "{{ tools is none }} {{ tools is defined }} {{ documents is none }} {{ add_generation_prompt }}", {}),
    ("undefined_ops", "{{ (x | length) }} {{ x | list }} {{ x ~ 'a' }} {{ x is string }} {{ x | trim }}|{{ x | upper }}|{{ x | default([]) | length }}", {}),
    ("tojson_options", "{{ x | tojson(ensure_ascii=true) }}|{{ x | tojson(indent='\t') }}|{{ messages | tojson }}", {"x": {"é": "😀", "n": [1.5]}, "messages": [{"role": "user", "content": "ü", "n": 2.0}]}),
    ("strftime_defined", "{{ strftime_now is defined }} {{ raise_exception is defined }} {{ namespace is defined }}", {}),
    ("nested_macro_calls", "{% macro a(x) %}[{{ b(x) }}]{% endmacro %}{% macro b(x) %}{{ x | upper }}{% endmacro %}{{ a('q') | trim }}{{ a('r') }}", {}),
    ("error_raise", "{{ raise_exception('custom failure: ' ~ 42) }}", {}),
    ("error_undefined_attr", "{{ foo.bar }}", {}),
    ("error_undefined_item_chain", "{{ messages[0]['role'] }}", {"messages": []}),
    ("error_add_undefined", "{{ x + 1 }}", {}),
    ("error_str_plus_int", "{{ 'a' + 1 }}", {}),
    ("error_list_append", "{% set l = [] %}{{ l.append(1) }}", {}),
    ("error_ns_assign_non_ns", "{% set d = {} %}{% set d.x = 1 %}", {}),
    ("error_call_missing_method", "{{ [1].startswith('a') }}", {}),
    ("error_unknown_filter_runtime", "{% if false %}{{ x | nosuchfilter }}{% endif %}ok", {}),
]

SUITES = {
    "gemma4": ("gemma4.jinja", gemma4_cases),
    "gemma3": ("gemma3.jinja", gemma3_cases),
    "llama3": ("llama3.3.jinja", llama3_cases),
    "qwen3": ("qwen3.jinja", qwen3_cases),
    "mistral": ("mistral-nemo.jinja", mistral_cases),
    "features": (None, None),
}

# --------------------------------------------------------------------------------------------
# Renderers
# --------------------------------------------------------------------------------------------


def transformers_renderer():
    import transformers
    from transformers.utils import chat_template_utils as ctu

    import inspect

    use_render = False
    if hasattr(ctu, "render_jinja_template"):
        params = inspect.signature(ctu.render_jinja_template).parameters
        use_render = "conversations" in params and "chat_template" in params

    def render(template, messages, options):
        opts = copy.deepcopy(options)
        if use_render:
            rendered, _ = ctu.render_jinja_template(conversations=[copy.deepcopy(messages)], chat_template=template, **opts)
            return rendered[0]
        compiled = ctu._compile_jinja_template(template)
        tools = opts.pop("tools", None)
        documents = opts.pop("documents", None)
        agp = opts.pop("add_generation_prompt", False)
        return compiled.render(messages=copy.deepcopy(messages), tools=tools, documents=documents,
                               add_generation_prompt=agp, **opts)

    name = "transformers " + transformers.__version__
    name += " render_jinja_template" if use_render else " _compile_jinja_template"
    return name, render


def dump_environment(path):
    """Saves the source of transformers' renderer, to check the environment settings we mirror."""
    import inspect
    import jinja2
    import transformers
    from transformers.utils import chat_template_utils as ctu

    with open(path, "w", encoding="utf-8") as f:
        f.write(f"# transformers {transformers.__version__}, jinja2 {jinja2.__version__}\n")
        for fn in ("_compile_jinja_template", "render_jinja_template"):
            if hasattr(ctu, fn):
                f.write(inspect.getsource(getattr(ctu, fn)) + "\n")


def replica_renderer():
    """Development stand-in: transformers' environment rebuilt on plain jinja2 (no transformers)."""
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from datetime import datetime

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def render(template, messages, options):
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda f: datetime.now().strftime(f)
        opts = copy.deepcopy(options)
        tools = opts.pop("tools", None)
        documents = opts.pop("documents", None)
        agp = opts.pop("add_generation_prompt", False)
        return env.from_string(template).render(messages=copy.deepcopy(messages), tools=tools, documents=documents,
                                                add_generation_prompt=agp, **opts)

    return "jinja2 " + jinja2.__version__ + " replica (not transformers)", render


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--replica", action="store_true", help="use plain jinja2 instead of transformers")
    ap.add_argument("--only", default="")
    ap.add_argument("--dump-env", default="", help="write transformers' renderer source here")
    args = ap.parse_args()
    import jinja2

    name, render = replica_renderer() if args.replica else transformers_renderer()
    if args.dump_env and not args.replica:
        try:
            dump_environment(args.dump_env)
        except Exception as e:  # informational only
            print("could not dump environment:", e)
    os.makedirs(args.out, exist_ok=True)
    total = 0
    for suite, (fname, make) in SUITES.items():
        if args.only and suite != args.only:
            continue
        cases = []
        if make is None:  # feature suite: inline templates, messages=[] unless set
            for case_name, source, variables in FEATURES:
                opts = dict(variables)
                messages = opts.pop("messages", [])
                entry = {"name": case_name, "source": source, "messages": messages, "options": opts}
                try:
                    entry["expected"] = render(source, messages, opts)
                except jinja2.exceptions.TemplateError as e:
                    entry["error"] = str(e)
                except Exception as e:  # TypeError etc. surface as plain exceptions in jinja2
                    entry["error"] = str(e)
                    entry["error_type"] = type(e).__name__
                cases.append(entry)
        else:
            with open(os.path.join(TEMPLATES, fname), encoding="utf-8") as f:
                template = f.read()
            for case_name, messages, options in make():
                entry = {"name": case_name, "messages": messages, "options": options}
                try:
                    entry["expected"] = render(template, messages, options)
                except jinja2.exceptions.TemplateError as e:
                    entry["error"] = str(e)
                cases.append(entry)
        total += len(cases)
        doc = {"template": fname, "renderer": name, "cases": cases}
        with open(os.path.join(args.out, f"templates_{suite}.json"), "w", encoding="utf-8") as f:
            json.dump(doc, f, ensure_ascii=False, indent=1)
            f.write("\n")
        errs = sum(1 for c in cases if "error" in c)
        print(f"{suite}: {len(cases)} cases ({errs} expected errors) via {name}")
    print(f"total {total}")


if __name__ == "__main__":
    sys.exit(main())
