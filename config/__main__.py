"""``python -m config``: print the settings table (Markdown) that the README's configuration section holds."""

from config.settings import describe


def main() -> None:
    print("| variable | default | unit | meaning |")
    print("|---|---|---|---|")
    for name, default, unit, doc in describe():
        print(f"| `{name}` | `{default}` | {unit} | {doc} |")


if __name__ == "__main__":
    main()
