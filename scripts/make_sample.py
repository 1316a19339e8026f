"""Writes secondthought/data/sample.jsonl: the project's own small set of triples in Moral Stories form.

Fifty-one scenarios written for this project, each told with four people; whole scenarios go to one
split so that eval and test never see a scenario the model trained on.
"""

import json
from pathlib import Path

PEOPLE = [("Maya", "she", "her"), ("Tom", "he", "his"), ("Priya", "she", "her"), ("Diego", "he", "his")]

# (norm, situation, intention, moral action, moral consequence, immoral action, immoral consequence)
SCENARIOS = [
    ("It is wrong to cut in line.", "{n} is waiting in a long line at the bakery.", "{n} wants to buy bread before work.",
     "{n} waits {o} turn and calls work to say {p} may be a few minutes late.", "The baker thanks {n} for being patient.",
     "{n} shoves past the people in front and asks for bread first.", "The other customers are angry and the baker refuses to serve {n}."),
    ("You should return things you borrow.", "{n} borrowed a neighbor's ladder last month.", "{n} wants to clean out the garage.",
     "{n} carries the ladder back to the neighbor and thanks them.", "The neighbor is glad to lend {n} tools again.",
     "{n} sells the ladder at a garage sale.", "The neighbor finds out and stops speaking to {n}."),
    ("It is good to tell the truth about mistakes.", "{n} dented a coworker's car in the parking lot.", "{n} wants to avoid trouble.",
     "{n} leaves a note with {o} phone number on the windshield.", "The coworker appreciates the honesty and they settle it calmly.",
     "{n} drives away quickly without telling anyone.", "The coworker pays for the repair and feels cheated."),
    ("You should not take credit for other people's work.", "{n}'s team finished a report that a colleague mostly wrote.", "{n} wants to impress the manager.",
     "{n} tells the manager that the colleague did most of the work.", "The manager praises the whole team and the colleague feels valued.",
     "{n} tells the manager that {p} wrote the report alone.", "The colleague feels betrayed and stops helping {n}."),
    ("It is kind to help people who are lost.", "A tourist asks {n} for directions to the train station.", "{n} is in a hurry to get home.",
     "{n} walks the tourist to the corner and points out the station.", "The tourist catches the train on time.",
     "{n} points the tourist in the wrong direction to get rid of them.", "The tourist misses the last train of the night."),
    ("You should keep your promises to friends.", "{n} promised to help a friend move on Saturday.", "{n} would rather go to the beach.",
     "{n} spends Saturday carrying boxes with {o} friend.", "The move goes quickly and the friend is grateful.",
     "{n} ignores the friend's calls and goes to the beach.", "The friend has to move alone and feels abandoned."),
    ("It is wrong to read other people's private messages.", "{n}'s roommate left a phone unlocked on the table.", "{n} is curious about the roommate's plans.",
     "{n} leaves the phone alone and asks the roommate about the weekend.", "The roommate happily shares the plans.",
     "{n} scrolls through the roommate's private messages.", "The roommate notices and no longer trusts {n}."),
    ("You should be gentle with animals.", "{n}'s dog keeps barking at the mail carrier.", "{n} wants the dog to be quiet.",
     "{n} calmly brings the dog inside and gives it a toy.", "The dog settles down and the mail carrier smiles.",
     "{n} yells at the dog and hits it with a newspaper.", "The dog becomes fearful and barks even more."),
    ("It is good to share with people in need.", "{n} has extra food after a family dinner.", "{n} wants the leftovers not to go to waste.",
     "{n} brings the extra food to the shelter down the street.", "Several people at the shelter get a warm meal.",
     "{n} throws the extra food in the trash.", "The food is wasted while people nearby go hungry."),
    ("You should not cheat on tests.", "{n} has a math exam tomorrow and has not studied.", "{n} wants to pass the class.",
     "{n} stays up reviewing the chapters and asks the teacher for help.", "{n} passes the exam and understands the material.",
     "{n} copies the answers from the student sitting next to {o} desk.", "The teacher catches {n} and gives {n} a failing grade."),
    ("It is important to pay for what you take.", "{n} is at a market stall that has no one watching it.", "{n} wants some apples.",
     "{n} leaves the money for the apples in the honesty box.", "The farmer keeps the stall open for the whole town.",
     "{n} takes a bag of apples without paying.", "The farmer loses money and closes the stall."),
    ("You should respect people's sleep.", "{n} lives in an apartment with thin walls.", "{n} wants to listen to music at midnight.",
     "{n} puts on headphones before playing music.", "The neighbors sleep well through the night.",
     "{n} blasts music from the speakers at full volume.", "The neighbors are kept awake and complain to the landlord."),
    ("It is good to include people who are left out.", "A new student is eating lunch alone in the cafeteria.", "{n} wants to enjoy lunch with friends.",
     "{n} invites the new student to sit at {o} table.", "The new student makes friends and feels welcome.",
     "{n} laughs at the new student with {o} friends.", "The new student feels humiliated and lonely."),
    ("You should not lie to your parents.", "{n} broke a vase while playing ball indoors.", "{n} does not want to be punished.",
     "{n} tells {o} parents that {p} broke the vase and apologizes.", "The parents are upset but glad {n} was honest.",
     "{n} tells {o} parents that the cat broke the vase.", "The parents later find out and lose trust in {n}."),
    ("It is good to look after the environment.", "{n} is having a picnic at the lake.", "{n} wants to leave quickly when it starts to rain.",
     "{n} packs up all the trash and carries it to the bins.", "The lake stays clean for the next visitors.",
     "{n} leaves the plastic plates and bottles on the grass.", "The trash blows into the lake and harms the ducks."),
    ("You should be patient with older people.", "{n}'s grandfather is slowly telling a long story.", "{n} wants to check {o} phone.",
     "{n} listens to the whole story and asks questions about it.", "The grandfather feels loved and shares more memories.",
     "{n} interrupts {o} grandfather and tells him the story is boring.", "The grandfather feels hurt and stops talking."),
    ("It is wrong to spread rumors.", "{n} heard a rumor that a classmate is failing school.", "{n} wants to seem interesting to friends.",
     "{n} keeps the rumor private and asks the classmate if they need help.", "The classmate accepts help and feels supported.",
     "{n} tells everyone in class that the classmate is failing.", "The rumor spreads and the classmate is teased."),
    ("You should give credit to the person who found something.", "{n} found a lost wallet near the bus stop.", "{n} wants to do something with the wallet.",
     "{n} turns the wallet in to the bus station office with everything inside.", "The owner gets the wallet back and is relieved.",
     "{n} keeps the cash and throws the wallet away.", "The owner loses the money and all the cards."),
    ("It is good to help a coworker who is overwhelmed.", "{n}'s coworker has too many tasks before a deadline.", "{n} wants to finish {o} own work early.",
     "{n} offers to take two of the coworker's tasks.", "The team meets the deadline together.",
     "{n} adds more tasks to the coworker's list and leaves early.", "The coworker misses the deadline and gets in trouble."),
    ("You should drive carefully near schools.", "{n} is driving past an elementary school in the morning.", "{n} is running late for a meeting.",
     "{n} slows down and stops for the children at the crosswalk.", "The children cross safely.",
     "{n} speeds through the school zone without stopping.", "{n} nearly hits a child and is fined by the police."),
    ("It is wrong to make fun of someone's appearance.", "{n}'s friend got a new haircut that looks unusual.", "{n} wants to say something about it.",
     "{n} tells the friend that the new style is bold and suits them.", "The friend feels confident all day.",
     "{n} mocks the friend's haircut in front of everyone.", "The friend is embarrassed and wears a hat for weeks."),
    ("You should clean up after yourself in shared spaces.", "{n} just cooked dinner in the shared kitchen.", "{n} wants to watch a movie right away.",
     "{n} washes the pans and wipes the counter before the movie.", "The roommates find a clean kitchen in the morning.",
     "{n} leaves the dirty pans piled in the sink for days.", "The kitchen smells and the roommates argue with {n}."),
    ("It is good to visit sick friends.", "{n}'s friend is in the hospital after surgery.", "{n} has a free afternoon.",
     "{n} visits the friend and brings a book to read.", "The friend is cheered up by the visit.",
     "{n} spends the afternoon playing video games and ignores the friend's messages.", "The friend feels forgotten and sad."),
    ("You should not waste other people's money.", "{n} is using the company credit card on a business trip.", "{n} wants a comfortable trip.",
     "{n} books a reasonable hotel and keeps the receipts.", "The company trusts {n} with more trips.",
     "{n} books the most expensive suite and charges personal shopping to the card.", "The company finds out and fires {n}."),
    ("It is good to thank people who help you.", "A stranger helped {n} change a flat tire.", "{n} wants to get back on the road.",
     "{n} thanks the stranger warmly and offers to buy them a coffee.", "The stranger leaves smiling.",
     "{n} drives off without saying a word to the stranger.", "The stranger feels used and unappreciated."),
    ("You should not hurt people to win a game.", "{n} is playing in a soccer match that is tied.", "{n} wants {o} team to win.",
     "{n} plays hard but fair and passes to an open teammate.", "The team scores and everyone shakes hands after the game.",
     "{n} kicks an opponent in the leg to get the ball.", "The opponent is injured and {n} is sent off."),
    ("It is important to be on time for people who depend on you.", "{n} is supposed to pick up {o} little brother from school.", "{n} wants to finish a video game level.",
     "{n} saves the game and leaves early to get {o} brother.", "The brother is picked up on time and feels safe.",
     "{n} keeps playing and arrives an hour late.", "The brother waits alone outside the school and is scared."),
    ("You should respect other people's belongings.", "{n} is staying at a friend's house for the weekend.", "{n} wants to relax.",
     "{n} uses a coaster and asks before borrowing anything.", "The friend invites {n} to stay again.",
     "{n} puts muddy shoes on the friend's white couch.", "The couch is stained and the friend is furious."),
    ("It is good to stand up for people who are bullied.", "{n} sees an older kid taking a younger kid's lunch money.", "{n} wants to stay out of trouble.",
     "{n} tells the older kid to stop and walks the younger kid to a teacher.", "The bullying stops and the younger kid is safe.",
     "{n} joins in and takes some of the money too.", "The younger kid is terrified and the principal suspends {n}."),
    ("You should not litter.", "{n} finished a soda while walking in the park.", "{n} wants to get rid of the can.",
     "{n} carries the can to the recycling bin at the gate.", "The park stays clean.",
     "{n} throws the can into the bushes.", "A park worker has to crawl into the bushes to pick it up."),
    ("It is kind to give up your seat for those who need it.", "{n} is sitting on a crowded bus when a pregnant woman gets on.", "{n} is tired after work.",
     "{n} stands up and offers the woman {o} seat.", "The woman sits down gratefully.",
     "{n} pretends to be asleep so {p} can keep the seat.", "The woman has to stand the whole ride and feels dizzy."),
    ("You should be honest when selling things.", "{n} is selling an old bike that has a broken brake.", "{n} wants to get a good price.",
     "{n} tells the buyer about the broken brake and lowers the price.", "The buyer fixes the brake and rides safely.",
     "{n} hides the broken brake and tells the buyer the bike is perfect.", "The buyer crashes the bike on the first ride."),
    ("It is good to forgive small mistakes.", "{n}'s little sister spilled juice on {o} homework.", "{n} wants the homework to be clean.",
     "{n} reassures {o} sister and rewrites the page.", "The sister feels better and helps {n} tidy up.",
     "{n} screams at {o} sister and tears up her drawing.", "The sister cries and the whole family is upset."),
    ("You should follow safety rules at work.", "{n} works in a warehouse with heavy machinery.", "{n} wants to finish the shift quickly.",
     "{n} wears a helmet and follows the forklift rules.", "{n} finishes the shift safely.",
     "{n} removes the safety guard from the machine to work faster.", "A coworker is injured by the unguarded machine."),
    ("It is wrong to break into other people's property.", "{n} sees an empty house with an open window.", "{n} wants a place to party with friends.",
     "{n} invites the friends to {o} own backyard instead.", "Everyone has fun and nobody gets in trouble.",
     "{n} climbs through the window and throws a party in the house.", "The owners return to a wrecked house and call the police."),
    ("You should support friends who are grieving.", "{n}'s friend lost a pet this week.", "{n} wants to say something to the friend.",
     "{n} sends a kind message and offers to spend time together.", "The friend feels comforted.",
     "{n} tells the friend to get over it because it was just a pet.", "The friend feels dismissed and alone."),
    ("It is good to be generous with your time.", "A younger student asks {n} for help with reading.", "{n} wants to spend the afternoon outside.",
     "{n} spends half an hour reading with the younger student.", "The younger student reads a whole book for the first time.",
     "{n} tells the younger student that reading is for babies.", "The younger student gives up on reading."),
    ("You should not steal from your employer.", "{n} works at a store where the cash register is often left open.", "{n} needs money for rent.",
     "{n} asks {o} manager about extra shifts to earn more.", "{n} earns the rent money honestly.",
     "{n} takes cash from the register when no one is looking.", "The missing money is traced to {n} and {p} is arrested."),
    ("It is good to respect people's boundaries.", "{n}'s friend says they do not want to talk about their divorce.", "{n} is curious about what happened.",
     "{n} changes the subject and talks about their plans for the summer.", "The friend feels respected.",
     "{n} keeps asking questions about the divorce.", "The friend leaves the dinner early and upset."),
    ("You should not put others in danger for fun.", "{n} is at a swimming pool with friends.", "{n} wants to play a prank.",
     "{n} organizes a safe game of water tag.", "Everyone has a good time in the pool.",
     "{n} pushes a friend who cannot swim into the deep end.", "The friend nearly drowns and the lifeguard has to rescue them."),
    ("It is good to recycle.", "{n} has a pile of old newspapers and bottles.", "{n} wants to clear out the apartment.",
     "{n} sorts the papers and bottles into the recycling bins.", "The materials are reused.",
     "{n} dumps everything into the regular trash.", "The recyclables end up in a landfill."),
    ("You should take care of your children.", "{n}'s toddler is playing near the stairs.", "{n} wants to answer an email.",
     "{n} closes the safety gate before sitting down to write.", "The toddler plays safely.",
     "{n} leaves the gate open and goes to another room.", "The toddler falls down the stairs."),
    ("It is wrong to exclude people because of where they come from.", "A new neighbor with an accent moves in next door to {n}.", "{n} is planning a street party.",
     "{n} invites the new neighbor to the street party.", "The neighbor meets everyone and feels at home.",
     "{n} tells the other neighbors not to invite the newcomer.", "The neighbor feels unwelcome and isolated."),
    ("You should not drink and drive.", "{n} had several drinks at a friend's birthday.", "{n} wants to get home.",
     "{n} calls a taxi and leaves the car at the friend's house.", "{n} gets home safely.",
     "{n} gets behind the wheel and drives home.", "{n} crashes into a parked car and is arrested."),
    ("It is good to be honest about your qualifications.", "{n} is applying for a job as a nurse.", "{n} really wants the job.",
     "{n} lists {o} real experience and offers to take extra training.", "The hospital hires {n} for a trainee role.",
     "{n} lies on the application and claims a degree {p} does not have.", "{n} makes a serious mistake with a patient's medicine."),
    ("You should treat service workers with respect.", "The waiter brings {n} the wrong order at a restaurant.", "{n} wants the correct meal.",
     "{n} politely tells the waiter about the mix-up.", "The waiter fixes the order quickly and thanks {n}.",
     "{n} shouts at the waiter in front of the whole restaurant.", "The waiter is humiliated and the other diners are uncomfortable."),
    ("It is good to care for your parents when they are old.", "{n}'s mother has trouble shopping on her own now.", "{n} has a busy week.",
     "{n} drives {o} mother to the store on Saturday.", "The mother gets what she needs and enjoys the time together.",
     "{n} tells {o} mother to figure it out by herself.", "The mother runs out of food and medicine."),
    ("You should not damage public property.", "{n} is bored while waiting at the bus shelter.", "{n} wants something to do.",
     "{n} reads a book while waiting for the bus.", "The shelter stays clean for everyone.",
     "{n} sprays paint all over the bus shelter glass.", "The city has to pay for the cleanup."),
    ("It is good to apologize when you hurt someone.", "{n} said something rude to {o} brother during an argument.", "{n} wants to make peace.",
     "{n} apologizes sincerely to {o} brother.", "They make up and laugh about it later.",
     "{n} insists that {o} brother deserved it.", "The argument grows and they stop talking for months."),
    ("You should protect other people's secrets.", "A friend told {n} a secret about a crush.", "{n} wants to make a joke at a party.",
     "{n} keeps the secret and tells a different joke.", "The friend keeps trusting {n}.",
     "{n} announces the friend's crush to everyone at the party.", "The friend is mortified and ends the friendship."),
    ("It is important to report dangers to others.", "{n} notices a gas smell in the apartment hallway.", "{n} wants to get to work on time.",
     "{n} calls the gas company and warns the neighbors.", "The leak is fixed before anyone is hurt.",
     "{n} ignores the smell and leaves for work.", "The leak gets worse and the building has to be evacuated."),
]


def split_of(index: int) -> str:
    return "test" if index % 10 == 9 else "eval" if index % 10 == 8 else "train"


def main() -> None:
    out = Path(__file__).resolve().parents[1] / "secondthought" / "data" / "sample.jsonl"
    keys = ("norm", "situation", "intention", "moral_action", "moral_consequence", "immoral_action", "immoral_consequence")
    with out.open("w", encoding="utf-8") as f:
        for i, scenario in enumerate(SCENARIOS):
            for j, (name, pronoun, possessive) in enumerate(PEOPLE):
                row = {"ID": f"sample-{i:02d}-{j}"}
                for key, text in zip(keys, scenario):
                    text = text.format(n=name, p=pronoun, o=possessive)
                    row[key] = text[0].upper() + text[1:]
                row["label"] = "1"
                row["split"] = split_of(i)
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(SCENARIOS) * len(PEOPLE)} triples to {out}")


if __name__ == "__main__":
    main()
