"""Data fixtures: a small real-imagery archive shared by the whole test session."""
