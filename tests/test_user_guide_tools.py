"""The user guide's tool snippets, run as written.

Each snippet below is copied verbatim from USER_GUIDE.md (Core Concepts > Tool System, Custom Tools >
Creating Basic Tools / Advanced Tool Features / Tool Chaining, API Reference > Tool System). They run
with top-level ``await`` in a namespace holding what the guide's surrounding text provides: an initialized
``context_manager`` and the names the guide imports elsewhere (``ToolCategory``, ``ToolPermission``,
``Dict``, ``Any``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Dict  # noqa: UP035 - the guide's snippets use typing.Dict

import pytest

from context_manager.core.config import ContextManagerConfig
from context_manager.core.enhanced_context_manager import EnhancedContextManager
from context_manager.core.tool_system import ToolCategory, ToolDefinition, ToolPermission, ToolResult
from tests.guide_snippets import run_snippet, verbatim_test

CORE_CONCEPTS_TOOL_SYSTEM = """
# Register a custom tool
async def my_tool(parameters):
    return {"result": "Tool executed successfully"}

context_manager.tool_manager.register_function_tool(
    "my_tool", my_tool, "Description of my tool"
)

# Execute tool
result = await context_manager.execute_tool("my_tool", param1="value1")
"""

CREATING_BASIC_TOOLS = '''
from context_manager.core.tool_system import tool

@tool(
    name="text_analyzer",
    description="Analyze text and provide statistics",
    category=ToolCategory.ANALYSIS,
    tags=["text", "analysis"]
)
async def text_analyzer(parameters):
    """Analyze text and return statistics."""
    text = parameters.get("text", "")
    
    return {
        "word_count": len(text.split()),
        "character_count": len(text),
        "average_word_length": len(text.split()) / len(text.split()) if text.split() else 0
    }

# Register the tool
context_manager.tool_manager.register_function_tool(
    "text_analyzer", text_analyzer, "Text analysis tool"
)

# Execute the tool
result = await context_manager.execute_tool(
    "text_analyzer",
    text="Hello world! This is a test."
)
'''  # noqa: W293 - verbatim, trailing spaces included

ADVANCED_TOOL_FEATURES = '''
@tool(
    name="data_processor",
    description="Process and transform data",
    category=ToolCategory.DATA_PROCESSING,
    timeout=30.0,  # Tool timeout
    permission=ToolPermission.RESTRICTED,  # Access control
    rate_limit=10,  # Rate limiting
    rate_window=60.0
)
async def data_processor(parameters):
    """Process data with error handling and validation."""
    try:
        data = parameters.get("data", {})
        
        # Validate input
        if not isinstance(data, dict):
            raise ValueError("Data must be a dictionary")
        
        # Process data
        processed = {k.upper(): v for k, v in data.items()}
        
        return {
            "success": True,
            "processed_data": processed,
            "original_size": len(data),
            "processed_size": len(processed)
        }
        
    except Exception as e:
        return {
            "success": False,
            "error": str(e)
        }
'''  # noqa: W293

TOOL_CHAINING = '''
# Execute multiple tools in sequence
async def analyze_and_summarize(text):
    """Chain multiple tools together."""
    
    # Step 1: Analyze text
    analysis_result = await context_manager.execute_tool(
        "text_analyzer",
        text=text
    )
    
    if not analysis_result.success:
        return {"error": "Analysis failed"}
    
    # Step 2: Create summary
    summary_result = await context_manager.execute_tool(
        "text_summarizer",
        text=text,
        max_length=100
    )
    
    return {
        "analysis": analysis_result.result,
        "summary": summary_result.result if summary_result.success else None
    }
'''  # noqa: W293

API_TOOL_REGISTRATION = """
@tool(name="my_tool", description="Tool description")
async def my_tool(parameters: Dict[str, Any]) -> Dict[str, Any]:
    # Tool implementation
    pass

# Register tool
context_manager.tool_manager.register_function_tool(
    "my_tool", my_tool, "Tool description"
)
"""

API_TOOL_EXECUTION = """
result = await context_manager.execute_tool(
    "tool_name",
    param1="value1",
    param2="value2"
)

if result.success:
    print(f"Tool result: {result.result}")
else:
    print(f"Tool error: {result.error}")
"""


SNIPPETS = {
    "Core Concepts > Tool System": CORE_CONCEPTS_TOOL_SYSTEM,
    "Custom Tools > Creating Basic Tools": CREATING_BASIC_TOOLS,
    "Custom Tools > Advanced Tool Features": ADVANCED_TOOL_FEATURES,
    "Custom Tools > Tool Chaining": TOOL_CHAINING,
    "API Reference > Tool System (registration)": API_TOOL_REGISTRATION,
    "API Reference > Tool System (execution)": API_TOOL_EXECUTION,
}


test_snippets_are_verbatim_copies_of_the_guide = verbatim_test(SNIPPETS)


@pytest.fixture
async def namespace(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    config = ContextManagerConfig(max_tokens=2000, cache_path=str(tmp_path / "cache"))
    context_manager = EnhancedContextManager(config=config)
    await context_manager.initialize()
    try:
        yield {
            "context_manager": context_manager,
            "ToolCategory": ToolCategory,
            "ToolPermission": ToolPermission,
            "Dict": Dict,  # noqa: UP006
            "Any": Any,
        }
    finally:
        await context_manager.cleanup()


async def test_core_concepts_tool_system(namespace: dict[str, Any]) -> None:
    await run_snippet(CORE_CONCEPTS_TOOL_SYSTEM, namespace)
    result = namespace["result"]
    assert isinstance(result, ToolResult)
    assert result.success and result.result == {"result": "Tool executed successfully"}


async def test_creating_basic_tools(namespace: dict[str, Any]) -> None:
    await run_snippet(CREATING_BASIC_TOOLS, namespace)
    result = namespace["result"]
    assert result.success
    assert result.result == {"word_count": 6, "character_count": 28, "average_word_length": 1.0}
    definition = namespace["context_manager"].tool_manager.get_tool("text_analyzer")
    assert definition.category is ToolCategory.ANALYSIS
    assert definition.tags == ("text", "analysis")
    assert namespace["context_manager"].tool_manager.list_tools(category=ToolCategory.ANALYSIS) == [
        definition
    ]


async def test_advanced_tool_features(namespace: dict[str, Any]) -> None:
    await run_snippet(
        "from context_manager.core.tool_system import tool\n" + ADVANCED_TOOL_FEATURES, namespace
    )
    processor = namespace["data_processor"]
    definition = processor.__tool_definition__
    assert isinstance(definition, ToolDefinition)
    assert (definition.timeout, definition.rate_limit, definition.rate_window) == (30.0, 10, 60.0)
    assert definition.permission is ToolPermission.RESTRICTED
    assert definition.category is ToolCategory.DATA_PROCESSING
    assert (await processor({"data": {"a": 1}}))["processed_data"] == {"A": 1}  # still callable

    tools = namespace["context_manager"].tool_manager
    tools.register_tool(processor)
    denied = await namespace["context_manager"].execute_tool("data_processor", data={"a": 1})
    assert denied.error_type == "permission_denied"  # RESTRICTED needs approval by default

    async def approve(definition: ToolDefinition, arguments: dict[str, Any]) -> bool:
        return True

    tools.approval_callback = approve
    allowed = await namespace["context_manager"].execute_tool("data_processor", data={"a": 1})
    assert allowed.success and allowed.result["processed_data"] == {"A": 1}
    invalid = await namespace["context_manager"].execute_tool("data_processor", data=[1])
    assert invalid.success and invalid.result == {"success": False, "error": "Data must be a dictionary"}


async def test_tool_chaining(namespace: dict[str, Any]) -> None:
    await run_snippet(CREATING_BASIC_TOOLS, namespace)
    await run_snippet(TOOL_CHAINING, namespace)
    chain = namespace["analyze_and_summarize"]
    # no text_summarizer registered: its unknown-tool result has success=False, the chain carries on
    outcome = await chain("one two three")
    assert outcome["analysis"]["word_count"] == 3
    assert outcome["summary"] is None

    async def text_summarizer(text: str, max_length: int = 100) -> str:
        """Summarise a text.

        Args:
            text: The text to summarise.
            max_length: Longest summary in characters.
        """
        return text[:max_length]

    namespace["context_manager"].tool_manager.register_function_tool(
        "text_summarizer", text_summarizer, "Summarise text"
    )
    outcome = await chain("x" * 150)
    assert outcome["summary"] == "x" * 100


async def test_api_reference_tool_registration_and_execution(
    namespace: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    await run_snippet(
        "from context_manager.core.tool_system import tool\n" + API_TOOL_REGISTRATION, namespace
    )
    result = await namespace["context_manager"].execute_tool("my_tool", anything=1)
    assert result.success and result.result is None

    await run_snippet(API_TOOL_EXECUTION, namespace)
    assert capsys.readouterr().out.startswith("Tool error: unknown tool 'tool_name'")

    async def tool_name(parameters: dict[str, Any]) -> dict[str, Any]:
        return dict(parameters)

    namespace["context_manager"].tool_manager.register_function_tool("tool_name", tool_name, "Echo")
    await run_snippet(API_TOOL_EXECUTION, namespace)
    assert capsys.readouterr().out == "Tool result: {'param1': 'value1', 'param2': 'value2'}\n"


async def test_guide_registers_my_tool_twice_in_one_session_only_with_replace(
    namespace: dict[str, Any],
) -> None:
    # Core Concepts and the API Reference both define a different `my_tool`: in one session the second
    # registration is a duplicate and says how to replace it.
    from context_manager.core.errors import ToolRegistrationError

    await run_snippet(CORE_CONCEPTS_TOOL_SYSTEM, namespace)
    with pytest.raises(ToolRegistrationError, match="pass replace=True"):
        await run_snippet(
            "from context_manager.core.tool_system import tool\n" + API_TOOL_REGISTRATION, namespace
        )
